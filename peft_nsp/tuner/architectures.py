# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Which transformers models VPT-NSP² supports, and where it finds their blocks, attention, features and heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPModel,
    CLIPVisionModel,
    DeiTForImageClassification,
    DeiTModel,
    Dinov2ForImageClassification,
    Dinov2Model,
    SiglipModel,
    SiglipVisionModel,
    ViTForImageClassification,
    ViTModel,
)
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer
from transformers.models.vit.modeling_vit import ViTLayer

from ..nullspace.collector import AttentionAccess


@dataclass(frozen=True)
class Architecture:
    """Where VPT-NSP² finds the parts of one supported model class."""

    vision_prefix: str = ""
    """Module-name prefix of the image tower; blocks outside it (CLIP's text tower) are never prompted."""
    backbone: str = ""
    """Submodule holding the backbone a classification model wraps (``"vit"``); ``""``: the model itself. The
    adapter's heads live in it, so an adapter's keys are the same on ``ViTModel`` and ``ViTForImageClassification``."""
    classifier: str | None = None
    """Name of the classifier replaced by the continual head (``*ForImageClassification``), ``None`` for a backbone."""
    pooling: str = "cls"
    """How a backbone's pooled feature is read: ``"cls"`` (CLS token of the final-LayerNorm ``last_hidden_state``)
    or ``"pooler"`` (``pooler_output``: CLIP's post-LayerNorm CLS, SigLIP's attention-pooling head)."""
    projection: str | None = None
    """Linear image projection into the text-embedding space applied after pooling (CLIP's ``visual_projection``)."""
    text_tower: bool = False
    """An image–text model (`CLIPModel`, `SiglipModel`): calls without ``input_ids`` run the image tower only, and
    class names can be encoded with ``get_text_features``."""
    text_padding: bool | str = True
    """Tokenizer padding for the text tower (SigLIP was trained on ``"max_length"`` padding)."""


#: Supported model classes and their layout.
SUPPORTED_MODELS: dict[type[nn.Module], Architecture] = {
    ViTModel: Architecture(),
    ViTForImageClassification: Architecture(classifier="classifier", backbone="vit"),
    DeiTModel: Architecture(),
    DeiTForImageClassification: Architecture(classifier="classifier", backbone="deit"),
    Dinov2Model: Architecture(),
    Dinov2ForImageClassification: Architecture(classifier="classifier", backbone="dinov2"),
    CLIPVisionModel: Architecture(pooling="pooler"),
    CLIPModel: Architecture(
        vision_prefix="vision_model.", pooling="pooler", projection="visual_projection", text_tower=True
    ),
    SiglipVisionModel: Architecture(pooling="pooler"),
    SiglipModel: Architecture(
        vision_prefix="vision_model.", pooling="pooler", text_tower=True, text_padding="max_length"
    ),
}

#: Transformer block classes that get prompts; each has a self-attention with ``q_proj``/``k_proj``.
BLOCK_CLASSES: tuple[type[nn.Module], ...] = (ViTLayer, DeiTLayer, Dinov2Layer, CLIPEncoderLayer, SiglipEncoderLayer)


def supported_model_names() -> str:
    return ", ".join(sorted(cls.__name__ for cls in SUPPORTED_MODELS))


def architecture(model: nn.Module) -> Architecture:
    """The layout of a supported model.

    Raises:
        ValueError: the model is not one of [`SUPPORTED_MODELS`], or a SigLIP image tower without its
            attention-pooling head (it has no pooled feature for the head).
    """
    spec = SUPPORTED_MODELS.get(type(model))
    if spec is None:
        raise ValueError(
            f"VPT-NSP² does not support `{type(model).__name__}`. Supported models: {supported_model_names()}. "
            "Load the backbone with one of these classes (e.g. `ViTModel.from_pretrained(...)`)."
        )
    if isinstance(model, (SiglipModel, SiglipVisionModel)) and not vision_config(model).vision_use_head:
        raise ValueError(
            f"This `{type(model).__name__}` has no attention-pooling head (`vision_use_head=False`), so there is no "
            "pooled image feature for the continual head; use a SigLIP checkpoint with `vision_use_head=True`."
        )
    return spec


def vision_config(model: nn.Module):
    """The configuration of the image tower (the model's own one for an image-only model)."""
    return getattr(model.config, "vision_config", None) or model.config


def backbone_module(model: nn.Module, spec: Architecture) -> nn.Module:
    """The module that holds the adapter's heads: the wrapped backbone of a classification model, else the model."""
    return getattr(model, spec.backbone) if spec.backbone else model


def describe_model(model: nn.Module) -> dict[str, object]:
    """What an adapter records about the model it was created on (checked when it is loaded elsewhere)."""
    config = vision_config(model)
    return {
        "model_class": type(model).__name__,
        "num_hidden_layers": int(config.num_hidden_layers),
        "num_attention_heads": int(config.num_attention_heads),
        "hidden_size": int(config.hidden_size),
        "head_input_size": pooled_size(model, architecture(model)),
    }


def pooled_size(model: nn.Module, spec: Architecture) -> int:
    """Size of the pooled image feature: the continual head's input before any image projection."""
    if spec.classifier is not None:
        return getattr(model, spec.classifier).in_features
    return vision_config(model).hidden_size


def pooled_features(outputs, spec: Architecture) -> torch.Tensor:
    """``(B, F)`` pooled feature of a backbone's (or an image tower's) output."""
    if spec.pooling == "cls":
        return outputs.last_hidden_state[:, 0]
    return outputs.pooler_output


def attention_access(block: nn.Module) -> AttentionAccess:
    """The q/k projections and head layout of a supported block."""
    if isinstance(block, (CLIPEncoderLayer, SiglipEncoderLayer)):
        attention = block.self_attn
        num_heads, scaling = attention.num_heads, attention.scale
    else:
        attention = block.attention
        num_heads, scaling = attention.num_attention_heads, attention.scaling
    return AttentionAccess(
        q_proj=attention.q_proj,
        k_proj=attention.k_proj,
        num_heads=num_heads,
        head_dim=attention.head_dim,
        scaling=float(scaling),
    )
