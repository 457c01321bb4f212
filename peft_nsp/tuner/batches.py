# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""How the tuner's data passes (`update_null_space`, `update_class_statistics`) read a batch: the default
``forward_fn`` and ``labels_fn``, as PEFT's ``lora/eva.py`` takes a ``forward_fn`` for its data pass. Pass your own
for any other batch layout."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .._torch_utils import module_device


#: Runs the prompted model on one batch: ``forward_fn(model, batch)``; the tuner reads what it needs from hooks.
ForwardFn = Callable[[nn.Module, Any], Any]
#: The ``(B,)`` class ids of one batch.
LabelsFn = Callable[[Any], torch.Tensor]


def pixel_values_of(batch: Any) -> torch.Tensor:
    """``(B, C, H, W)`` pixel values of a tensor batch, a ``(pixel_values, ...)`` tuple or a mapping."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        if "pixel_values" not in batch:
            raise ValueError(
                f"A batch mapping needs a `pixel_values` key, got keys {sorted(batch)}; or pass `forward_fn=`."
            )
        return batch["pixel_values"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(
        f"Cannot read pixel values from a batch of type {type(batch).__name__}: yield tensors, (pixel_values, ...) "
        "tuples or mappings with a `pixel_values` key, or pass `forward_fn=`."
    )


def labels_of(batch: Any) -> torch.Tensor:
    """``(B,)`` class ids of a mapping with ``labels`` or a ``(pixel_values, labels)`` tuple (the default
    ``labels_fn``)."""
    if isinstance(batch, Mapping) and "labels" in batch:
        return torch.as_tensor(batch["labels"])
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return torch.as_tensor(batch[1])
    raise ValueError(
        "The analytic head (`classifier='analytic'`, the default) and class statistics are fitted per class, so the "
        "statistics pass needs labels: yield mappings with a `labels` key or `(pixel_values, labels)` tuples, pass "
        "`labels_fn=`, or choose `classifier='linear'`."
    )


def forward_pixel_values(forward_kwargs: Mapping[str, Any] | None = None) -> ForwardFn:
    """The default ``forward_fn``: ``model(pixel_values=<the batch's pixel values on its device>, **forward_kwargs)``
    (e.g. ``{"interpolate_pos_encoding": True}``)."""

    def forward(model: nn.Module, batch: Any) -> Any:
        return model(pixel_values=pixel_values_of(batch).to(module_device(model)), **(forward_kwargs or {}))

    return forward
