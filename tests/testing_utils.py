# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the tests: tiny random ViT-family models (no Hub access), small learnable image datasets,
the prompted layers of a model."""

from __future__ import annotations

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
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

import peft_nsp


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


def blob_images(num_classes: int, per_class: int, size: int = 16, seed: int = 0) -> Dataset:
    """``num_classes × per_class`` RGB images; class ``c`` has a bright square at position/colour ``c``."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(num_classes):
        for _ in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            row, col = divmod(label, 4)
            pixels[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4, label % 3] = 255
            images.append(PILImage.fromarray(pixels))
            labels.append(label)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"class_{c}" for c in range(num_classes)])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def to_tensor(images: list) -> torch.Tensor:
    """PIL images → ``(B, 3, H, W)`` in [-1, 1]."""
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def prompted_layers(model) -> list[peft_nsp.VPTNSPLayer]:
    """The prompted blocks of a `PeftModel` (or its tuner), in forward order."""
    return getattr(model, "base_model", model).prompted_layers()


def prompts(model, adapter: str = "default") -> list[torch.nn.Parameter]:
    """The prompt of every prompted block."""
    return [layer.vpt_nsp_prompt[adapter] for layer in prompted_layers(model)]
