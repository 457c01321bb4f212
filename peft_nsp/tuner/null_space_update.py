# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Fold a finished task into the null-space state of every prompted layer (the data-driven step of VPT-NSP²).

Like PEFT's data-driven initialisations (``lora/eva.py``), this runs the model over data with hooks: it collects
the task's ``C1``/``C2`` sums (`StatisticsCollector`), combines them with the earlier tasks' statistics, rebuilds
both projectors, and commits all layers at once: a failure, or a non-finite value anywhere, leaves every layer as it
was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..nullspace.collector import LayerSums, StatisticsCollector
from ..nullspace.projector import null_space_projector
from .architectures import attention_access
from .config import VPTNSPConfig
from .layer import VPTNSPLayer


class NonFiniteError(ValueError):
    """A NaN or Inf reached a value that would be saved (statistics, projectors, prompts, heads, the loss)."""


@dataclass
class NullSpaceLayerReport:
    """What one `update_null_space` call did to one layer."""

    layer_index: int
    key_null_dim: int
    """Dimension of projector 1's null space (out of D)."""
    prompt_null_dim: int
    """Dimension of projector 2's null space (out of M)."""
    rows: float
    """Image-token query rows (``B·H·N``) collected for this task."""


def raise_if_not_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise [`NonFiniteError`] naming every tensor of ``tensors`` that holds a NaN or Inf."""
    bad = [name for name, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())]
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise NonFiniteError(f"{what}: non-finite values (NaN/Inf) in {shown}. Nothing was changed.")


@torch.no_grad()
def fold_task(
    layers: Sequence[VPTNSPLayer],
    adapter_name: str,
    config: VPTNSPConfig,
    batches: Iterable[Any],
    forward: Callable[[Any], None],
    reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 16,
    prepare_also: Callable[[], Callable[[], None]] | None = None,
) -> list[NullSpaceLayerReport]:
    """Collect a finished task's statistics over ``batches`` and rebuild every layer's projectors.

    Args:
        layers: the prompted layers of the adapter, in forward order.
        adapter_name: the adapter whose prompts and state are used (it must be the active one).
        config: its configuration (``task_weighting``, thresholds, η).
        batches: the task's training data with evaluation transforms.
        forward: runs the model (in eval mode) on one batch.
        reduce_fn: sums a tensor over processes, so every rank builds identical projectors.
        chunk_size: images per chunk for the softmax attention rows.
        prepare_also: another update computed from the same pass (the analytic head's fit): called once the layers'
            updates are computed and checked, it returns the commit that runs with theirs (all or nothing).

    Returns:
        One [`NullSpaceLayerReport`] per layer.

    Raises:
        ValueError: no batch was collected. [`NonFiniteError`]: a statistic or projector is not finite (e.g. a NaN
            pixel); no layer was changed.
    """
    accesses = [attention_access(layer.base_layer) for layer in layers]
    device = layers[0].vpt_nsp_prompt[adapter_name].device
    with StatisticsCollector(accesses, [config.prompt_length] * len(layers), chunk_size) as collector:
        for batch in batches:
            forward(batch)
    collected = collector.sums
    if reduce_fn is not None:
        # A process with an empty shard contributes zeros but must join every reduction.
        collected = [
            (sums or LayerSums.zeros(access, config.prompt_length, device)).reduce(reduce_fn)
            for sums, access in zip(collected, accesses)
        ]
    if any(sums is None or float(sums.rows) == 0 for sums in collected):
        raise ValueError("`update_null_space` got no batches: pass the finished task's training data.")
    # Everything is computed and checked before any layer changes.
    updates = []
    for layer, access, sums in zip(layers, accesses, collected):
        state = layer.vpt_nsp_null_space[adapter_name]
        rows = float(sums.rows)
        key_covariance, prompt_covariance = state.accumulated(
            sums.key_covariance(access.k_proj.weight), sums.prompt_gram, rows, config.task_weighting
        )
        name = f"layer {layer.layer_index}"
        raise_if_not_finite({f"{name} C1": key_covariance, f"{name} C2": prompt_covariance}, "`update_null_space`")
        # Eigendecompositions on the CPU in float64: identical on every rank, whatever the accelerator.
        key = null_space_projector(
            key_covariance.cpu(), config.eta1, config.threshold_mode, config.threshold_offset1, config.times_factor1
        )
        prompt = null_space_projector(
            prompt_covariance.cpu(), config.eta2, config.threshold_mode, config.threshold_offset2, config.times_factor2
        )
        raise_if_not_finite({f"{name} Proj1": key.matrix, f"{name} Proj2": prompt.matrix}, "`update_null_space`")
        updates.append((layer, state, key_covariance, prompt_covariance, rows, key, prompt))
    raise_if_not_finite(
        {f"layer {layer.layer_index} prompt": layer.vpt_nsp_prompt[adapter_name] for layer, *_ in updates},
        "`update_null_space`",
    )
    commit_also = prepare_also() if prepare_also is not None else None
    reports = []
    if commit_also is not None:
        commit_also()
    for layer, state, key_covariance, prompt_covariance, rows, key, prompt in updates:
        state.commit(key_covariance, prompt_covariance, rows, key, prompt, layer.vpt_nsp_prompt[adapter_name].detach())
        reports.append(NullSpaceLayerReport(layer.layer_index, key.null_dim, prompt.null_dim, rows))
    return reports
