# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""timm-format ViT checkpoints → transformers `ViTModel`, checked against an independent timm-layout forward."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import save_file
from torch.nn import functional as F
from transformers import AutoModel, ViTConfig, ViTImageProcessorPil, ViTModel
from transformers.image_utils import PILImageResampling

from peft_nsp.timm_vit import (
    TIMM_VIT_ARCHITECTURES,
    convert_timm_vit_state_dict,
    is_timm_checkpoint,
    load_timm_vit,
    save_timm_vit_as_transformers,
    timm_vit_config,
)


HIDDEN, DEPTH, HEADS, PATCH, IMAGE, MLP = 32, 2, 4, 4, 16, 64
GRID = IMAGE // PATCH
MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def timm_state_dict(
    layer_scale: bool = True, qkv_bias: bool = True, no_embed_class: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights in timm's ViT layout (hidden 32, 2 blocks, patch 4, 16×16 images), classifier included."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=generator)

    state = {
        "cls_token": rand(1, 1, HIDDEN, scale=1.0),
        "pos_embed": rand(1, GRID * GRID + (0 if no_embed_class else 1), HIDDEN, scale=0.5),
        "patch_embed.proj.weight": rand(HIDDEN, 3, PATCH, PATCH),
        "patch_embed.proj.bias": rand(HIDDEN),
        "norm.weight": rand(HIDDEN, offset=1.0),
        "norm.bias": rand(HIDDEN),
        "head.weight": rand(10, HIDDEN),
        "head.bias": rand(10),
    }
    for i in range(DEPTH):
        block = {
            "norm1.weight": rand(HIDDEN, offset=1.0),
            "norm1.bias": rand(HIDDEN),
            "attn.qkv.weight": rand(3 * HIDDEN, HIDDEN, scale=0.3),
            "attn.qkv.bias": rand(3 * HIDDEN),
            "attn.proj.weight": rand(HIDDEN, HIDDEN),
            "attn.proj.bias": rand(HIDDEN),
            "ls1.gamma": rand(HIDDEN, scale=0.5, offset=0.5),
            "norm2.weight": rand(HIDDEN, offset=1.0),
            "norm2.bias": rand(HIDDEN),
            "mlp.fc1.weight": rand(MLP, HIDDEN),
            "mlp.fc1.bias": rand(MLP),
            "mlp.fc2.weight": rand(HIDDEN, MLP),
            "mlp.fc2.bias": rand(HIDDEN),
            "ls2.gamma": rand(HIDDEN, scale=0.5, offset=0.5),
        }
        if not layer_scale:
            del block["ls1.gamma"], block["ls2.gamma"]
        if not qkv_bias:
            del block["attn.qkv.bias"]
        state.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return state


def timm_forward(state: dict[str, torch.Tensor], pixels: torch.Tensor, num_heads: int = HEADS) -> torch.Tensor:
    """timm's ``forward_features`` written from its layout with plain ops, in float64: ``(B, 1 + G², D)``."""
    sd = {k: v.double() for k, v in state.items()}
    x = pixels.double()
    batch, dim = x.shape[0], sd["cls_token"].shape[-1]
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd.get("patch_embed.proj.bias"), stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2)
    cls = sd["cls_token"].expand(batch, -1, -1)
    if sd["pos_embed"].shape[1] == tokens.shape[1]:  # no_embed_class: CLS gets no position embedding
        tokens = torch.cat([cls, tokens + sd["pos_embed"]], dim=1)
    else:
        tokens = torch.cat([cls, tokens], dim=1) + sd["pos_embed"]
    head_dim = dim // num_heads
    for i in range(sum(k.endswith("attn.qkv.weight") for k in sd)):
        p = lambda name: sd.get(f"blocks.{i}.{name}")  # noqa: E731
        h = F.layer_norm(tokens, (dim,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, -1, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        h = F.linear(h, p("attn.proj.weight"), p("attn.proj.bias"))
        tokens = tokens + (h if p("ls1.gamma") is None else p("ls1.gamma") * h)
        h = F.layer_norm(tokens, (dim,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias")))
        h = F.linear(h, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        tokens = tokens + (h if p("ls2.gamma") is None else p("ls2.gamma") * h)
    return F.layer_norm(tokens, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def timm_config(architecture: str = "vit_tiny_test_patch4_16", model_args: dict | None = None) -> dict:
    config = {
        "architecture": architecture,
        "num_classes": 10,
        "num_features": HIDDEN,
        "global_pool": "token",
        "pretrained_cfg": {
            "tag": "test",
            "input_size": [3, IMAGE, IMAGE],
            "interpolation": "bicubic",
            "mean": MEAN,
            "std": STD,
            "crop_pct": 0.9,
            "crop_mode": "center",
        },
    }
    if model_args is not None:
        config["model_args"] = model_args
    return config


def write_timm_folder(
    folder: Path, state: dict[str, torch.Tensor], config: dict | None = None, weights: str = "model.safetensors"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or timm_config(model_args={"num_heads": HEADS})))
    if weights == "model.safetensors":
        save_file(state, str(folder / weights))
    elif weights == "pytorch_model.bin":
        torch.save(state, folder / weights)
    return folder


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any real Hub download in these tests is a bug."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: hf_hub_download{args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("layer_scale", [True, False])
def test_matches_timm_forward(tmp_path, pixels, layer_scale, qkv_bias, attn_implementation):
    state = timm_state_dict(layer_scale=layer_scale, qkv_bias=qkv_bias)
    model, _ = load_timm_vit(write_timm_folder(tmp_path / "timm", state), attn_implementation=attn_implementation)
    assert isinstance(model, ViTModel) and not model.training and model.pooler is None
    assert model.config._attn_implementation == attn_implementation
    assert model.config.qkv_bias is qkv_bias
    assert (model.layers[0].attention.q_proj.bias is not None) is qkv_bias
    with torch.no_grad():
        out = model(pixel_values=pixels).last_hidden_state
    assert out.shape == (2, 1 + GRID * GRID, HIDDEN)
    torch.testing.assert_close(out.double(), timm_forward(state, pixels), atol=1e-5, rtol=1e-5)


def test_no_embed_class_and_missing_biases(tmp_path, pixels):
    """DeiT-III style: ``pos_embed`` without CLS position; proj/fc/patch biases absent (timm's *_bias=False)."""
    state = timm_state_dict(no_embed_class=True)
    for key in ["patch_embed.proj.bias", "blocks.0.attn.proj.bias", "blocks.1.mlp.fc2.bias"]:
        del state[key]
    model, _ = load_timm_vit(write_timm_folder(tmp_path / "timm", state))
    with torch.no_grad():
        out = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(out.double(), timm_forward(state, pixels), atol=1e-5, rtol=1e-5)


def test_pytorch_bin_and_dtype(tmp_path, pixels):
    state = timm_state_dict()
    folder = write_timm_folder(tmp_path / "timm", state, weights="pytorch_model.bin")
    model, _ = load_timm_vit(folder, dtype=torch.float64)
    assert model.dtype == torch.float64
    with torch.no_grad():
        out = model(pixel_values=pixels.double()).last_hidden_state
    torch.testing.assert_close(out, timm_forward(state, pixels), atol=1e-6, rtol=1e-6)  # LayerScale folded in float32


def test_image_processor_from_pretrained_cfg(tmp_path):
    config = timm_config(model_args={"num_heads": HEADS})
    _, processor = load_timm_vit(write_timm_folder(tmp_path / "a", timm_state_dict(), config))
    assert isinstance(processor, ViTImageProcessorPil)
    assert list(processor.image_mean) == MEAN and list(processor.image_std) == STD
    assert processor.size["height"] == IMAGE and processor.size["width"] == IMAGE
    assert processor.resample == PILImageResampling.BICUBIC
    config["pretrained_cfg"].update(interpolation="bilinear", input_size=[3, 24, 32])
    _, processor = load_timm_vit(write_timm_folder(tmp_path / "b", timm_state_dict(), config))
    assert processor.resample == PILImageResampling.BILINEAR
    assert (processor.size["height"], processor.size["width"]) == (24, 32)


def test_save_as_transformers_round_trip(tmp_path, pixels):
    source = write_timm_folder(tmp_path / "timm", timm_state_dict())
    output = save_timm_vit_as_transformers(source, tmp_path / "hf")
    model, processor = load_timm_vit(source)
    reloaded = AutoModel.from_pretrained(output, add_pooling_layer=False).eval()
    assert isinstance(reloaded, ViTModel)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
        assert torch.equal(reloaded(pixel_values=pixels).last_hidden_state, expected)
    saved = ViTImageProcessorPil.from_pretrained(output)
    assert list(saved.image_mean) == MEAN and saved.resample == processor.resample
    assert is_timm_checkpoint(source) and not is_timm_checkpoint(output)


def test_is_timm_checkpoint(tmp_path):
    assert is_timm_checkpoint("timm/vit_base_patch16_224.augreg_in21k")
    assert is_timm_checkpoint("timm/vit_base_patch16_224.augreg_in21k", revision="main")
    assert not is_timm_checkpoint("google/vit-base-patch16-224-in21k")
    assert not is_timm_checkpoint(tmp_path)  # a folder without config.json
    transformers_folder = tmp_path / "hf"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(
        transformers_folder
    )
    assert not is_timm_checkpoint(transformers_folder)
    (tmp_path / "resnet").mkdir()
    (tmp_path / "resnet" / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    assert not is_timm_checkpoint(tmp_path / "resnet")


def test_unknown_architecture_needs_num_heads(tmp_path, pixels):
    state = timm_state_dict()
    folder = write_timm_folder(tmp_path / "timm", state, timm_config())  # no model_args
    with pytest.raises(ValueError, match=r"vit_tiny_test_patch4_16.*num_heads="):
        load_timm_vit(folder)
    model, _ = load_timm_vit(folder, num_heads=HEADS)
    with torch.no_grad():
        out = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(out.double(), timm_forward(state, pixels), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="contradicts"):
        timm_vit_config(timm_config(model_args={"num_heads": HEADS}), state, num_heads=2)


@pytest.mark.parametrize(
    "extra", ["reg_token", "norm_pre.weight", "blocks.1.attn.q_norm.weight", "fc_norm.weight", "dist_token"]
)
def test_unsupported_keys_raise(tmp_path, extra):
    state = timm_state_dict()
    state[extra] = torch.zeros(1, 1, HIDDEN) if extra.endswith("token") else torch.ones(HIDDEN)
    pattern = re.escape(extra)
    with pytest.raises(ValueError, match=f"not supported.*{pattern}"):
        load_timm_vit(write_timm_folder(tmp_path / "timm", state))
    with pytest.raises(ValueError, match=pattern):
        convert_timm_vit_state_dict(state, ViTConfig())


def test_missing_files_raise(tmp_path):
    folder = write_timm_folder(tmp_path / "no_weights", timm_state_dict(), weights="none")
    with pytest.raises(FileNotFoundError, match=str(folder)):
        load_timm_vit(folder)
    (tmp_path / "no_config").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_timm_vit(tmp_path / "no_config")
    with pytest.raises(TypeError, match="device_map"):
        load_timm_vit(folder, device_map="auto")


def test_architecture_table_and_shape_checks():
    """Real sizes from the table, on the meta device (no memory): ViT-B/16 at 224 with LayerScale."""
    assert TIMM_VIT_ARCHITECTURES["vit_base_patch16_224"] == (768, 12, 12, 16, 224)
    assert TIMM_VIT_ARCHITECTURES["vit_large_patch14_224"] == (1024, 24, 16, 14, 224)
    for name in [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch32_224",
        "vit_base_patch16_384",
        "vit_large_patch16_224",
        "vit_huge_patch14_224",
        "vit_small_patch32_384",
    ]:
        assert name in TIMM_VIT_ARCHITECTURES
    d, g, meta = 768, 14, torch.device("meta")
    state = {
        "cls_token": torch.empty(1, 1, d, device=meta),
        "pos_embed": torch.empty(1, 1 + g * g, d, device=meta),
        "patch_embed.proj.weight": torch.empty(d, 3, 16, 16, device=meta),
        "patch_embed.proj.bias": torch.empty(d, device=meta),
        "norm.weight": torch.empty(d, device=meta),
        "norm.bias": torch.empty(d, device=meta),
        "head.weight": torch.empty(21843, d, device=meta),
    }
    shapes = {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "ls1.gamma": (d,),
        "ls2.gamma": (d,),
        "norm2.weight": (d,),
        "norm2.bias": (d,),
        "mlp.fc1.weight": (4 * d, d),
        "mlp.fc1.bias": (4 * d,),
        "mlp.fc2.weight": (d, 4 * d),
        "mlp.fc2.bias": (d,),
    }
    for i in range(12):
        state.update({f"blocks.{i}.{k}": torch.empty(s, device=meta) for k, s in shapes.items()})
    config = timm_vit_config(timm_config("vit_base_patch16_224"), state)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.patch_size, config.image_size, config.intermediate_size) == (16, 224, 3072)
    assert config.qkv_bias and config.layer_norm_eps == 1e-6 and config.hidden_act == "gelu"
    converted = convert_timm_vit_state_dict(state, config)
    with torch.device("meta"):
        expected = ViTModel(config, add_pooling_layer=False).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    with pytest.raises(ValueError, match=r"do not match timm architecture vit_large_patch16_224.*hidden size 768"):
        timm_vit_config(timm_config("vit_large_patch16_224"), state)
    with pytest.raises(ValueError, match="not a plain ViT"):
        timm_vit_config(timm_config("resnet50"), state)


def test_hub_download(tmp_path, pixels, monkeypatch):
    """A Hub id goes through `hf_hub_download` (faked here): weights fall back to pytorch_model.bin."""
    state = timm_state_dict()
    folder = write_timm_folder(tmp_path / "snapshot", state, weights="pytorch_model.bin")
    calls = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        if not (folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model, _ = load_timm_vit("timm/vit_tiny_test_patch4_16.test", revision="abc")
    assert calls == [
        ("timm/vit_tiny_test_patch4_16.test", name, "abc")
        for name in ("config.json", "model.safetensors", "pytorch_model.bin")
    ]
    with torch.no_grad():
        out = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(out.double(), timm_forward(state, pixels), atol=1e-5, rtol=1e-5)


def test_hub_unreachable_says_pass_a_local_folder(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot reach the Hub and the file is not cached.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(OSError, match=r"timm/vit_base_patch16_224\.augreg_in21k.*local folder"):
        load_timm_vit("timm/vit_base_patch16_224.augreg_in21k")


def test_avg_pool_warns_and_dtype_auto(tmp_path):
    config = timm_config(model_args={"num_heads": HEADS, "global_pool": "avg"})
    state = {k: v.to(torch.bfloat16) for k, v in timm_state_dict().items()}
    with pytest.warns(UserWarning, match="global_pool='avg'"):
        model, _ = load_timm_vit(write_timm_folder(tmp_path / "timm", state, config), dtype="auto")
    assert model.dtype == torch.bfloat16
