# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Tiny random ViT-family models (no Hub access) shared by the tests."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import peft_nsp  # noqa: F401  (registers the method with PEFT)

IMAGE_SIZE = 16
PATCH_SIZE = 4
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1

MODEL_CLASSES = {
    "vit": (ViTConfig, ViTModel, ViTForImageClassification),
    "deit": (DeiTConfig, DeiTModel, DeiTForImageClassification),
    "dinov2": (Dinov2Config, Dinov2Model, Dinov2ForImageClassification),
}


def tiny_config(family: str = "vit", attn_implementation: str = "eager", **overrides):
    """A 2-layer, hidden-32, 4-head config of ``family`` on 16×16 images with 4×4 patches."""
    config_cls = MODEL_CLASSES[family][0]
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_labels=3,
    )
    if family == "dinov2":
        kwargs["mlp_ratio"] = 2
        kwargs.pop("intermediate_size")
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    config._attn_implementation = attn_implementation
    return config


def tiny_model(family: str = "vit", classification: bool = False, seed: int = 0, **config_overrides):
    """A seeded tiny random model in eval mode."""
    torch.manual_seed(seed)
    model_cls = MODEL_CLASSES[family][2 if classification else 1]
    model = model_cls(tiny_config(family, **config_overrides))
    return model.eval()


def randomize_layernorms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every LayerNorm a random affine (fresh models have weight 1, bias 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
