# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Which transformers models VPT-NSP² supports, and where it finds their blocks, attention and classifier."""

from __future__ import annotations

from torch import nn
from transformers import (
    DeiTForImageClassification,
    DeiTModel,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTForImageClassification,
    ViTModel,
)
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer
from transformers.models.vit.modeling_vit import ViTLayer

from ..nullspace.collector import AttentionAccess

#: Supported model classes → name of the classifier module replaced by the continual head
#: (``None``: a backbone; the head reads the CLS token of the final LayerNorm).
SUPPORTED_MODELS: dict[type[nn.Module], str | None] = {
    ViTModel: None,
    ViTForImageClassification: "classifier",
    DeiTModel: None,
    DeiTForImageClassification: "classifier",
    Dinov2Model: None,
    Dinov2ForImageClassification: "classifier",
}

#: Transformer block classes that get prompts; each has ``.attention.{q_proj,k_proj}``.
BLOCK_CLASSES: tuple[type[nn.Module], ...] = (ViTLayer, DeiTLayer, Dinov2Layer)


def supported_model_names() -> str:
    return ", ".join(sorted(cls.__name__ for cls in SUPPORTED_MODELS))


def classifier_name(model: nn.Module) -> str | None:
    """Name of the classifier the continual head replaces, ``None`` for a backbone.

    Raises:
        ValueError: the model is not one of :data:`SUPPORTED_MODELS`.
    """
    for cls, name in SUPPORTED_MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"VPT-NSP² does not support `{type(model).__name__}`. Supported models: {supported_model_names()}. "
        "Load the backbone with one of these classes (e.g. `ViTModel.from_pretrained(...)`)."
    )


def attention_access(block: nn.Module) -> AttentionAccess:
    """The q/k projections and head layout of a supported block."""
    attention = block.attention
    return AttentionAccess(
        q_proj=attention.q_proj,
        k_proj=attention.k_proj,
        num_heads=attention.num_attention_heads,
        head_dim=attention.head_dim,
        scaling=float(attention.scaling),
    )
