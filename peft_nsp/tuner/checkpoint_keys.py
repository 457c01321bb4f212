# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The adapter's checkpoint keys: which state-dict keys are ours, and how a checkpoint's keys are put under this
model's names (the other model class of the same backbone, peft-nsp 0.1's layout) or refused when it does not fit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .architectures import architecture, describe_model
from .config import VPTNSPConfig
from .null_space_update import raise_if_not_finite


#: Containers the tuner keeps on the backbone module, keyed by adapter name.
CONTAINERS = ("vpt_nsp_head", "vpt_nsp_projection", "vpt_nsp_class_statistics")


def adapter_key(prefix: str, adapter_name: str) -> re.Pattern[str]:
    """Matches a state-dict key of one of our tensors of ``adapter_name``: the adapter name follows our container
    (``vpt_nsp_head.<name>.heads.0.weight``, ``….vpt_nsp_prompt.<name>``), not always second to last; group 1 is the
    key up to the container."""
    return re.compile(rf"((?:^|\.){prefix}\w+)\.{re.escape(adapter_name)}(?=\.|$)")


def remap_adapter_state_dict(
    model: nn.Module,
    inner: nn.Module,
    config: VPTNSPConfig,
    adapter_name: str,
    state_dict: dict[str, torch.Tensor],
    prefix: str,
) -> dict[str, torch.Tensor]:
    """Put a checkpoint's tensors under the names of ``model`` (whose backbone is ``inner``), and refuse one that
    does not fill it exactly.

    Handles the other model class of the same backbone (`ViTModel` ↔ `ViTForImageClassification`: the
    backbone prefix is added or dropped) and checkpoints of peft-nsp 0.1, whose heads sat on the tuner.
    """
    backbone = architecture(inner).backbone
    own = adapter_key(prefix, adapter_name)
    expected = {key: value for key, value in model.state_dict().items() if own.search(key)}
    # The checkpoint name of each of our tensors, as `_get_adapter_state_dict` + PEFT's renaming saved it.
    to_model = {}
    for model_key in expected:
        checkpoint_key = own.sub(r"\1", model_key, count=1)
        to_model[
            checkpoint_key if model_key.startswith("base_model.model.") else "base_model.model." + checkpoint_key
        ] = model_key
    checkpoint = {legacy_key(key, backbone): value for key, value in state_dict.items()}
    checkpoint = match_backbone_prefix(checkpoint, to_model, backbone)
    remapped = {to_model.get(key, key): value for key, value in checkpoint.items()}
    missing = sorted(set(expected) - set(remapped))
    unexpected = sorted(set(remapped) - set(expected))
    wrong_shape = [
        f"`{key}` {tuple(value.shape)} (checkpoint) vs {tuple(expected[key].shape)} (model)"
        for key, value in remapped.items()
        if key in expected and expected[key].shape != value.shape
    ]
    source = getattr(config, "loaded_from", None) or "the checkpoint"
    raise_if_not_finite(
        {key: value for key, value in remapped.items() if value.is_floating_point() and not value.is_meta},
        f"Loading the adapter `{source}` (restore it from its source or an earlier stage)",
    )
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (
            ("missing from the checkpoint", missing),
            ("not in this model", unexpected),
            ("of another shape", wrong_shape),
        ):
            if keys:
                problems.append(f"{len(keys)} {label} ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})")
        recorded = config.base_model_architecture or {}
        raise ValueError(
            "The VPT-NSP² adapter does not fit this model: tensors " + "; ".join(problems) + ". It was trained on "
            f"a `{recorded.get('model_class', '?')}` with {describe_architecture(recorded)} and {len(config.task_classes)} "
            f"task(s) ({sum(map(len, config.task_classes))} classes); this is a `{type(inner).__name__}` "
            f"with {describe_architecture(describe_model(inner))}. Load it onto the model it was trained on "
            f"(`base_model_name_or_path`={config.base_model_name_or_path!r})."
        )
    return remapped


def describe_architecture(architecture: Mapping[str, Any]) -> str:
    """A recorded architecture in words (for errors about an adapter that does not fit)."""
    if not architecture:
        return "an unrecorded architecture"
    return (
        f"{architecture.get('num_hidden_layers', '?')} blocks, {architecture.get('num_attention_heads', '?')} "
        f"attention heads, hidden size {architecture.get('hidden_size', '?')}, head input size "
        f"{architecture.get('head_input_size', '?')}"
    )


def legacy_key(key: str, backbone: str) -> str:
    """peft-nsp 0.1 kept the heads on the tuner (``base_model.vpt_nsp_head…``): move them to the backbone."""
    for name in CONTAINERS:
        if key.startswith(f"base_model.{name}."):
            inner = f"{backbone}.{name}" if backbone else name
            return f"base_model.model.{inner}." + key[len(f"base_model.{name}.") :]
    return key


def match_backbone_prefix(
    state_dict: dict[str, torch.Tensor], expected: Mapping[str, Any], backbone: str
) -> dict[str, torch.Tensor]:
    """Add or drop the backbone prefix (``vit.``) when the checkpoint comes from the other model class of the same
    backbone (`ViTModel` ↔ `ViTForImageClassification`); otherwise return ``state_dict`` unchanged."""
    if set(state_dict) <= set(expected):
        return state_dict
    root = "base_model.model."
    for name in filter(None, {backbone, *(key[len(root) :].split(".", 1)[0] for key in state_dict)}):
        inner = f"{root}{name}."
        if backbone:  # the checkpoint comes from the bare backbone: add the prefix
            moved = {(inner + key[len(root) :] if key.startswith(root) else key): v for key, v in state_dict.items()}
        else:  # the checkpoint comes from a classification model around this backbone: drop its prefix
            moved = {(root + key[len(inner) :] if key.startswith(inner) else key): v for key, v in state_dict.items()}
        if set(moved) <= set(expected):
            return moved
    return state_dict
