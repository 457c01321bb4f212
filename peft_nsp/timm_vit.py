# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""timm-format ViT checkpoints (e.g. ``timm/vit_base_patch16_224.augreg_in21k``) as transformers `ViTModel`\\ s.

timm publishes its models as a folder (or Hub repo) holding a ``config.json`` with an ``"architecture"`` key
(``"vit_base_patch16_224"``), optional ``"model_args"`` and a ``"pretrained_cfg"`` (input size, mean/std,
interpolation), next to ``model.safetensors`` (or ``pytorch_model.bin``) in timm's layout: ``cls_token``,
``pos_embed``, ``patch_embed.proj.*``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2}``,
``norm``, ``head``. This module converts them without timm (which is never imported; one module of about 550 lines
because the conversion's steps share timm's key layout and are read together):

- the fused ``qkv`` is split into ``q_proj``/``k_proj``/``v_proj`` (no biases when the checkpoint has none),
- LayerScale is folded into ``o_proj``/``fc2``: ``λ ⊙ (W x + b) = (diag(λ) W) x + λ ⊙ b``,
- ``no_embed_class`` position embeddings (DeiT-III) get a zero CLS position (exact: timm adds none to CLS),
- the classifier (``head.*``, ``pre_logits.*``) is *not* converted: the `ViTModel` is the backbone.

Variants whose extra weights change the features (register tokens, ``norm_pre``, ``q_norm``/``k_norm``,
``fc_norm``, distillation tokens, SwiGLU MLPs, attention pooling, no CLS token, ...) raise `ValueError`
rather than being converted wrongly. The image processor resizes straight to ``input_size`` (timm's eval
transform resizes to ``input_size / crop_pct`` and center-crops: that step is not reproduced).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import ViTConfig, ViTImageProcessorPil, ViTModel
from transformers.image_utils import PILImageResampling


__all__ = [
    "TIMM_VIT_ARCHITECTURES",
    "TimmViTArchitecture",
    "convert_timm_vit_state_dict",
    "is_timm_checkpoint",
    "load_timm_vit",
    "save_timm_vit_as_transformers",
    "timm_image_processor",
    "timm_vit_config",
]


class TimmViTArchitecture(NamedTuple):
    """Shape of one timm ViT architecture (what its name stands for)."""

    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int


# (hidden size, depth, heads) of timm's ViT widths.
_WIDTHS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1408, 40, 16),
    "gigantic": (1664, 48, 16),
}


def _architecture(width: str, patch_size: int, image_size: int) -> TimmViTArchitecture:
    return TimmViTArchitecture(*_WIDTHS[width], patch_size, image_size)


TIMM_VIT_ARCHITECTURES: dict[str, TimmViTArchitecture] = {
    **{
        f"vit_{width}_patch{patch}_{size}": _architecture(width, patch, size)
        for width, patch, size in [
            ("tiny", 16, 224),
            ("tiny", 16, 384),
            ("small", 32, 224),
            ("small", 32, 384),
            ("small", 16, 224),
            ("small", 16, 384),
            ("small", 8, 224),
            ("base", 32, 224),
            ("base", 32, 384),
            ("base", 16, 224),
            ("base", 16, 384),
            ("base", 8, 224),
            ("large", 32, 224),
            ("large", 32, 384),
            ("large", 16, 224),
            ("large", 16, 384),
            ("large", 14, 224),
            ("huge", 14, 224),
            ("giant", 14, 224),
            ("gigantic", 14, 224),
        ]
    },
    "vit_base_patch16_224_miil": _architecture("base", 16, 224),
    "vit_small_patch14_dinov2": _architecture("small", 14, 518),
    "vit_base_patch14_dinov2": _architecture("base", 14, 518),
    "vit_large_patch14_dinov2": _architecture("large", 14, 518),
    **{
        f"deit_{width}_patch16_{size}": _architecture(width, 16, size)
        for width, size in [("tiny", 224), ("small", 224), ("base", 224), ("base", 384)]
    },
    **{
        f"deit3_{width}_patch{patch}_{size}": _architecture(width, patch, size)
        for width, patch, size in [
            ("small", 16, 224),
            ("small", 16, 384),
            ("medium", 16, 224),
            ("base", 16, 224),
            ("base", 16, 384),
            ("large", 16, 224),
            ("large", 16, 384),
            ("huge", 14, 224),
        ]
    },
}
"""timm architecture name (``config.json``'s ``"architecture"``, without the ``.tag``) → its shape."""

_VIT_PREFIXES = ("vit_", "deit_", "deit3_")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_LAYER_NORM_EPS = 1e-6  # timm's ViT: partial(nn.LayerNorm, eps=1e-6)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's defaults when pretrained_cfg has none
_IMAGENET_STD = (0.229, 0.224, 0.225)
_ACTIVATIONS = {None: "gelu", "gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_RESAMPLE = {
    "bicubic": PILImageResampling.BICUBIC,
    "bilinear": PILImageResampling.BILINEAR,
    "nearest": PILImageResampling.NEAREST,
    "lanczos": PILImageResampling.LANCZOS,
    "box": PILImageResampling.BOX,
    "hamming": PILImageResampling.HAMMING,
}
_TOP_KEYS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
_BLOCK_KEYS = {
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "ls2.gamma",
}
_REQUIRED_BLOCK_KEYS = (
    "norm1.weight",
    "attn.qkv.weight",
    "attn.proj.weight",
    "norm2.weight",
    "mlp.fc1.weight",
    "mlp.fc2.weight",
)
_HEAD_PREFIXES = ("head.", "pre_logits.")  # the classifier: not converted
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
# timm linear / norm → ViTModel names, per layer (the fused qkv is split separately).
_LAYER_NAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download")
_MODEL_KWARGS = ("dtype", "torch_dtype", "attn_implementation")


def _check_keys(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Raise on keys this converter does not understand; return the depth (number of ``blocks.<i>``)."""
    unknown, blocks = [], set()
    for key in state_dict:
        if key in _TOP_KEYS or key.startswith(_HEAD_PREFIXES):
            continue
        match = _BLOCK.fullmatch(key)
        if match and match.group(2) in _BLOCK_KEYS:
            blocks.add(int(match.group(1)))
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:20]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
        raise ValueError(
            f"This timm ViT variant is not supported: its weights include {shown}, which a transformers `ViTModel` "
            "has no place for (e.g. register tokens, norm_pre, q_norm/k_norm, fc_norm, distillation tokens, SwiGLU "
            "MLPs, attention pooling). Dropping them would change the features, so nothing was converted."
        )
    depth = len(blocks)
    if blocks != set(range(depth)):
        raise ValueError(f"The timm state dict's blocks are not numbered 0..{depth - 1}: {sorted(blocks)}.")
    missing = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight") if k not in state_dict]
    missing += [
        key for i in range(depth) for k in _REQUIRED_BLOCK_KEYS if (key := f"blocks.{i}.{k}") not in state_dict
    ]
    if depth == 0 or missing:
        hint = " (a ViT without CLS token, e.g. class_token=False, is not supported)" if "cls_token" in missing else ""
        raise ValueError(f"Not a supported timm ViT state dict: missing {missing or 'blocks.*'}{hint}.")
    return depth


def _patch_grid(num_positions: int) -> tuple[int, bool]:
    """``pos_embed``'s token count → (side of the square patch grid, whether it has a CLS position)."""
    for has_cls in (True, False):
        side = round((num_positions - has_cls) ** 0.5)
        if side > 0 and side * side == num_positions - has_cls:
            return side, has_cls
    raise ValueError(
        f"timm `pos_embed` has {num_positions} positions: neither G² nor 1 + G² (non-square grids are not supported)."
    )


def timm_vit_config(
    timm_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> ViTConfig:
    """The `ViTConfig` of a timm ViT checkpoint.

    Hidden size, depth, MLP size, patch size, channels and image size (``pos_embed`` grid × patch) come from the
    state dict's shapes and are checked against the architecture table and ``model_args``; ``qkv_bias`` is whether
    ``blocks.0.attn.qkv.bias`` exists; ``layer_norm_eps`` is timm's 1e-6.

    Args:
        timm_config: timm's ``config.json`` (``"architecture"``, optional ``"model_args"``).
        state_dict: timm-layout weights (``pos_embed`` ``(1, [1 +] G², D)``, ``blocks.<i>.attn.qkv.weight``
            ``(3D, D)``, ``patch_embed.proj.weight`` ``(D, C, P, P)``).
        num_heads: attention heads, needed only for an architecture not in [`TIMM_VIT_ARCHITECTURES`] whose
            ``model_args`` do not give ``num_heads`` (heads cannot be read from the shapes).

    Raises:
        ValueError: unknown architecture without ``num_heads``, shapes that contradict the architecture, or an
            unsupported variant (see [`convert_timm_vit_state_dict`]).
    """
    depth = _check_keys(state_dict)
    name = str(timm_config.get("architecture", ""))
    if not name.startswith(_VIT_PREFIXES):
        raise ValueError(
            f"timm architecture {name!r} is not a plain ViT (expected a name starting with "
            f"{' / '.join(_VIT_PREFIXES)})."
        )
    model_args = dict(timm_config.get("model_args") or {})
    if model_args.get("class_token") is False or model_args.get("reg_tokens"):
        raise ValueError(
            f"timm {name} with class_token={model_args.get('class_token')}, reg_tokens="
            f"{model_args.get('reg_tokens')} is not supported: `ViTModel` has one CLS token."
        )
    norm_layer = model_args.get("norm_layer")
    if norm_layer not in (None, "layernorm"):
        raise ValueError(f"timm {name} with norm_layer={norm_layer!r} is not supported (LayerNorm only).")
    activation = model_args.get("act_layer")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"timm {name} with act_layer={activation!r} is not supported "
            f"(supported: {sorted(k for k in _ACTIVATIONS if k)})."
        )
    global_pool = model_args.get("global_pool", timm_config.get("global_pool", "token"))
    if global_pool not in ("token", "", None):
        warnings.warn(
            f"timm {name} pools its features with global_pool={global_pool!r}; the converted `ViTModel` "
            "is exact per token, but code that reads the CLS token gets different features than timm."
        )

    patch_shape = tuple(state_dict["patch_embed.proj.weight"].shape)  # (D, C, P, P)
    if len(patch_shape) != 4 or patch_shape[2] != patch_shape[3]:
        raise ValueError(f"timm `patch_embed.proj.weight` must be a square conv kernel, got {patch_shape}.")
    hidden_size, num_channels, patch_size = patch_shape[0], patch_shape[1], patch_shape[3]
    grid, _ = _patch_grid(state_dict["pos_embed"].shape[1])
    intermediate = {state_dict[f"blocks.{i}.mlp.fc1.weight"].shape[0] for i in range(depth)}
    qkv_bias = {f"blocks.{i}.attn.qkv.bias" in state_dict for i in range(depth)}
    if len(intermediate) != 1 or len(qkv_bias) != 1:
        raise ValueError(f"timm {name}: blocks differ in MLP size or qkv bias, which `ViTModel` cannot express.")

    base = name.split(".")[0]
    known = TIMM_VIT_ARCHITECTURES.get(base)
    expected = {
        "hidden size": model_args.get("embed_dim", known and known.hidden_size),
        "depth": model_args.get("depth", known and known.depth),
        "patch size": model_args.get("patch_size", known and known.patch_size),
    }
    found = {"hidden size": hidden_size, "depth": depth, "patch size": patch_size}
    wrong = [f"{k} {found[k]} (expected {v})" for k, v in expected.items() if v is not None and v != found[k]]
    if wrong:
        raise ValueError(f"The weights do not match timm architecture {name}: {', '.join(wrong)}.")
    candidates = {"model_args": model_args.get("num_heads"), "table": known and known.num_heads}
    candidates = {k: v for k, v in candidates.items() if v is not None}
    if num_heads is not None and any(v != num_heads for v in candidates.values()):
        raise ValueError(f"num_heads={num_heads} contradicts timm {name}'s {candidates}.")
    heads = num_heads or candidates.get("model_args") or candidates.get("table")
    if heads is None:
        raise ValueError(
            f"Unknown timm ViT architecture {name!r}: its number of attention heads cannot be read from the weights. "
            'Pass `num_heads=` (or add it to config.json\'s "model_args"); known architectures: '
            "peft_nsp.timm_vit.TIMM_VIT_ARCHITECTURES."
        )
    if hidden_size % heads:
        raise ValueError(f"hidden size {hidden_size} is not divisible by num_heads={heads}.")
    return ViTConfig(
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=intermediate.pop(),
        hidden_act=_ACTIVATIONS[activation],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=_LAYER_NORM_EPS,
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=num_channels,
        qkv_bias=qkv_bias.pop(),
        encoder_stride=patch_size,
    )


def _or_zeros(state_dict: Mapping[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
    """``state_dict[key]``, or zeros of ``like``'s first dimension (a missing bias is a zero bias)."""
    return state_dict[key] if key in state_dict else like.new_zeros(like.shape[0])


def convert_timm_vit_state_dict(state_dict: Mapping[str, torch.Tensor], config: ViTConfig) -> dict[str, torch.Tensor]:
    """`ViTModel` weights (``add_pooling_layer=False``) from timm-layout ones.

    The fused ``blocks.<i>.attn.qkv.weight`` ``(3D, D)`` / ``.bias`` ``(3D,)`` is split (q, k, v in that order)
    into ``layers.<i>.attention.{q,k,v}_proj``; LayerScale ``ls1.gamma`` / ``ls2.gamma`` ``(D,)`` is folded into
    ``o_proj`` / ``fc2`` (in float32, cast back to the weight's dtype); missing linear/patch/norm biases become zeros;
    a ``pos_embed`` ``(1, G², D)`` without CLS position gets a zero one. The classifier (``head.*``,
    ``pre_logits.*``) is dropped: the result is the backbone only.

    Args:
        state_dict: timm-layout weights.
        config: from [`timm_vit_config`] (its ``qkv_bias`` decides whether q/k/v biases are written).

    Raises:
        ValueError: keys this converter does not understand (register tokens, ``norm_pre``, ``q_norm``/``k_norm``,
            ``fc_norm``, ``dist_token``, ...), listed in the message; or missing required keys.
    """
    depth = _check_keys(state_dict)
    if depth != config.num_hidden_layers:
        raise ValueError(f"The state dict has {depth} blocks, the config {config.num_hidden_layers} layers.")
    grid = config.image_size // config.patch_size
    position = state_dict["pos_embed"]
    side, has_cls_position = _patch_grid(position.shape[1])
    if side != grid:
        raise ValueError(f"timm `pos_embed` has a {side}×{side} grid, the config {grid}×{grid}.")
    if not has_cls_position:  # no_embed_class: timm adds no position embedding to the CLS token
        position = torch.cat([position.new_zeros(1, 1, position.shape[-1]), position], dim=1)
    patch = state_dict["patch_embed.proj.weight"]
    state = {
        "embeddings.cls_token": state_dict["cls_token"],
        "embeddings.position_embeddings": position,
        "embeddings.patch_embeddings.projection.weight": patch,
        "embeddings.patch_embeddings.projection.bias": _or_zeros(state_dict, "patch_embed.proj.bias", patch),
        "layernorm.weight": state_dict["norm.weight"],
        "layernorm.bias": _or_zeros(state_dict, "norm.bias", state_dict["norm.weight"]),
    }
    for i in range(depth):
        source, target = f"blocks.{i}.", f"layers.{i}."
        for old, new in _LAYER_NAMES.items():
            weight = state_dict[f"{source}{old}.weight"]
            state[f"{target}{new}.weight"] = weight
            state[f"{target}{new}.bias"] = _or_zeros(state_dict, f"{source}{old}.bias", weight)
        for name, weight in zip(("q", "k", "v"), state_dict[f"{source}attn.qkv.weight"].chunk(3, dim=0)):
            state[f"{target}attention.{name}_proj.weight"] = weight
        if config.qkv_bias:
            for name, bias in zip(("q", "k", "v"), state_dict[f"{source}attn.qkv.bias"].chunk(3, dim=0)):
                state[f"{target}attention.{name}_proj.bias"] = bias
        for scale, linear in (("ls1.gamma", "attention.o_proj"), ("ls2.gamma", "mlp.fc2")):
            if f"{source}{scale}" not in state_dict:
                continue
            lam = state_dict[f"{source}{scale}"].float()
            weight, bias = state[f"{target}{linear}.weight"], state[f"{target}{linear}.bias"]
            state[f"{target}{linear}.weight"] = (lam[:, None] * weight.float()).to(weight.dtype)
            state[f"{target}{linear}.bias"] = (lam * bias.float()).to(bias.dtype)
    return state


def timm_image_processor(timm_config: Mapping[str, Any]) -> ViTImageProcessorPil:
    """A `ViTImageProcessorPil` from timm's ``pretrained_cfg``: size from ``input_size`` ``(C, H, W)``, mean/std,
    resample from ``interpolation`` (bicubic → ``PILImageResampling.BICUBIC``). ``crop_pct`` is not reproduced."""
    cfg = timm_config.get("pretrained_cfg") or {}
    height, width = list(cfg.get("input_size") or (3, 224, 224))[-2:]
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in _RESAMPLE:
        raise ValueError(f"timm interpolation {interpolation!r} has no PIL equivalent (known: {sorted(_RESAMPLE)}).")
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": int(height), "width": int(width)},
        resample=_RESAMPLE[interpolation],
        image_mean=[float(x) for x in cfg.get("mean") or _IMAGENET_MEAN],
        image_std=[float(x) for x in cfg.get("std") or _IMAGENET_STD],
    )


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def is_timm_checkpoint(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> bool:
    """Whether ``path_or_repo_id`` is a timm-format ViT checkpoint (never touches the network).

    A local folder: its ``config.json`` has an ``"architecture"`` starting with ``vit_`` / ``deit_`` / ``deit3_``.
    Anything else: a Hub id under the ``timm/`` organisation (``"timm/vit_base_patch16_224.augreg_in21k"``);
    [`load_timm_vit`] raises a clear error if it turns out not to be a plain ViT. ``revision`` is accepted
    for symmetry with [`load_timm_vit`] and not used.
    """
    del revision
    folder = Path(path_or_repo_id)
    if folder.is_dir():
        architecture = (_read_config(folder / "config.json") or {}).get("architecture")
        return isinstance(architecture, str) and architecture.startswith(_VIT_PREFIXES)
    return str(path_or_repo_id).startswith("timm/")


def _hub_file(repo_id: str, filename: str, revision: str | None, hub_kwargs: dict[str, Any]) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, **hub_kwargs))


def _checkpoint_files(
    path_or_repo_id: str | os.PathLike, revision: str | None, hub_kwargs: dict[str, Any]
) -> tuple[Path, Path]:
    """(``config.json``, weights file) of a local folder, or downloaded from the Hub."""
    folder = Path(path_or_repo_id)
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: not a timm checkpoint folder.")
        for name in _WEIGHT_FILES:
            if (folder / name).is_file():
                return config, folder / name
        raise FileNotFoundError(f"{folder} has no timm weights: expected {' or '.join(_WEIGHT_FILES)} in it.")
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id = str(path_or_repo_id)
    weights = None
    try:
        config = _hub_file(repo_id, "config.json", revision, hub_kwargs)
        for name in _WEIGHT_FILES:
            try:
                weights = _hub_file(repo_id, name, revision, hub_kwargs)
                break
            except EntryNotFoundError as error:
                if isinstance(error, LocalEntryNotFoundError):  # not cached and offline, not absent from the repo
                    raise
    except Exception as error:  # network, auth, a missing repo or an invalid id: the message names the cause
        raise OSError(_hub_error(repo_id, revision, error)) from error
    if weights is None:
        raise FileNotFoundError(f"Hub repo {repo_id} has no timm weights: none of {', '.join(_WEIGHT_FILES)}.")
    return config, weights


def _hub_error(repo_id: str, revision: str | None, error: Exception) -> str:
    at = f" at revision {revision}" if revision else ""
    return (
        f"Could not get timm checkpoint {repo_id!r}{at} from the Hugging Face Hub ({type(error).__name__}: "
        f"{error}). Without network access, pass a local folder holding its config.json and model.safetensors "
        "instead (it is not a local folder here)."
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_timm_vit(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    *,
    num_heads: int | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[ViTModel, ViTImageProcessorPil]:
    """A timm ViT checkpoint as a transformers `ViTModel` (no pooler, eval mode) and its image processor.

    The model maps ``pixel_values`` ``(B, C, H, W)`` to ``last_hidden_state`` ``(B, 1 + G², D)``, timm's
    ``forward_features``; timm's classifier head is not converted.

    Args:
        path_or_repo_id: a local timm folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
            or a Hub id such as ``"timm/vit_base_patch16_224.augreg_in21k"`` (both files are downloaded).
        revision: Hub revision (branch, tag or commit).
        num_heads: only for an architecture not in [`TIMM_VIT_ARCHITECTURES`] (see [`timm_vit_config`]).
        **from_pretrained_kwargs: ``attn_implementation`` (``"eager"``, ``"sdpa"``, ...), ``dtype`` (a
            `torch.dtype`, its name, or ``"auto"`` for the checkpoint's) for the model; ``cache_dir``, ``token``,
            ``local_files_only``, ``force_download`` for the download. Others raise `TypeError`.

    Raises:
        FileNotFoundError: a local folder without config.json or weights.
        OSError: the Hub could not be reached (e.g. no network): pass a local folder.
        ValueError: unknown architecture without ``num_heads``, or an unsupported timm variant.
    """
    unknown = sorted(set(from_pretrained_kwargs) - set(_HUB_KWARGS) - set(_MODEL_KWARGS))
    if unknown:
        raise TypeError(
            f"load_timm_vit got unsupported keyword arguments {unknown}; supported: "
            f"{sorted(_HUB_KWARGS + _MODEL_KWARGS)}."
        )
    hub_kwargs = {k: from_pretrained_kwargs.pop(k) for k in _HUB_KWARGS if k in from_pretrained_kwargs}
    config_path, weights_path = _checkpoint_files(path_or_repo_id, revision, hub_kwargs)
    timm_config = _read_config(config_path)
    if timm_config is None or "architecture" not in timm_config:
        raise ValueError(f'{config_path} is not a timm config.json (no "architecture" key).')
    state_dict = _read_weights(weights_path)
    config = timm_vit_config(timm_config, state_dict, num_heads=num_heads)
    converted = convert_timm_vit_state_dict(state_dict, config)
    dtype = from_pretrained_kwargs.pop("dtype", from_pretrained_kwargs.pop("torch_dtype", None))
    if dtype == "auto":
        dtype = state_dict["patch_embed.proj.weight"].dtype
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = ViTModel._from_config(config, add_pooling_layer=False, dtype=dtype, **from_pretrained_kwargs)
    model.load_state_dict(converted, strict=True)
    return model.eval(), timm_image_processor(timm_config)


def save_timm_vit_as_transformers(
    path_or_repo_id: str | os.PathLike,
    output_dir: str | os.PathLike,
    revision: str | None = None,
    *,
    num_heads: int | None = None,
    **from_pretrained_kwargs: Any,
) -> Path:
    """Convert a timm ViT checkpoint (see [`load_timm_vit`]) and write it as a transformers model folder.

    ``output_dir`` gets the `ViTModel` (safetensors, no pooler) and its `ViTImageProcessorPil`, so
    ``AutoModel.from_pretrained(output_dir, add_pooling_layer=False)`` and ``AutoImageProcessor.from_pretrained``
    work (without ``add_pooling_layer=False`` transformers adds a randomly initialised pooler).

    Returns:
        ``output_dir`` as a `Path`.
    """
    model, processor = load_timm_vit(path_or_repo_id, revision, num_heads=num_heads, **from_pretrained_kwargs)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir
