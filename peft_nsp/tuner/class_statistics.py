# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Per-class feature mean and covariance of each task's training data (the input of classifier alignment)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .._torch_utils import DeviceOnlyBuffers


def class_feature_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class sample count, feature sum and Gram matrix.

    Args:
        features: ``(N, F)`` pooled features.
        labels: ``(N,)`` class indices in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        ``(C,)`` counts, ``(C, F)`` sums ``Σ x`` and ``(C, F, F)`` Grams ``Σ x xᵀ``, all float64.
    """
    x = features.detach().double()
    counts = torch.bincount(labels, minlength=num_classes).double()
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, labels, x)
    grams = x.new_zeros(num_classes, x.shape[1], x.shape[1])
    for label in labels.unique().tolist():
        rows = x[labels == label]
        grams[label] = rows.T @ rows
    return counts, sums, grams


@torch.no_grad()
def collect_class_feature_sums(
    batches: Iterable[Any],
    features_of: Callable[[Any], torch.Tensor],
    labels_of: Callable[[Any], torch.Tensor],
    classes: list[int],
    feature_size: int,
    device: torch.device,
    reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[`class_feature_sums`] of one task over ``batches``, summed over processes.

    Args:
        batches: the task's training data (evaluation transforms).
        features_of: runs the model on a batch and returns the ``(B, F)`` pooled features the head reads.
        labels_of: the batch's ``(B,)`` class ids.
        classes: the task's class ids (``C``), in head order.
        feature_size: F.
        device: where empty sums are created (a process with an empty shard still joins the reductions).
        reduce_fn: sums a tensor over processes.

    Returns:
        ``(C,)`` counts, ``(C, F)`` sums and ``(C, F, F)`` Grams, float64.
    """
    column = {c: i for i, c in enumerate(classes)}
    total = None
    for batch in batches:
        labels = labels_of(batch).tolist()
        unknown = sorted(set(labels) - set(column))
        if unknown:
            raise ValueError(f"Labels {unknown} are not classes of this task ({classes}).")
        features = features_of(batch)
        local = torch.tensor([column[label] for label in labels], device=features.device)
        sums = class_feature_sums(features, local, len(classes))
        total = sums if total is None else tuple(a + b for a, b in zip(total, sums))
    if total is None:
        count = len(classes)
        shapes = [(count,), (count, feature_size), (count, feature_size, feature_size)]
        total = tuple(torch.zeros(shape, dtype=torch.float64, device=device) for shape in shapes)
    if reduce_fn is not None:
        total = tuple(reduce_fn(t) for t in total)
    return total


def mean_and_covariance(
    counts: torch.Tensor, sums: torch.Tensor, grams: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean and unbiased covariance from [`class_feature_sums`] (zero covariance for one sample).

    Returns:
        ``(C, F)`` means and ``(C, F, F)`` covariances ``(Σ x xᵀ − n μ μᵀ) / (n − 1)``.
    """
    means = sums / counts[:, None]
    outer = counts[:, None, None] * means[:, :, None] * means[:, None, :]
    covariances = (grams - outer) / (counts - 1).clamp_min(1)[:, None, None]
    return means, covariances


def pack_symmetric(matrices: torch.Tensor) -> torch.Tensor:
    """``(..., F, F)`` symmetric matrices → ``(..., F(F+1)/2)`` lower triangles, row by row."""
    rows, cols = torch.tril_indices(matrices.shape[-1], matrices.shape[-1], device=matrices.device)
    return matrices[..., rows, cols]


def unpack_symmetric(packed: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of [`pack_symmetric`]: ``(..., F(F+1)/2)`` → ``(..., F, F)``."""
    rows, cols = torch.tril_indices(size, size, device=packed.device)
    matrices = packed.new_zeros(*packed.shape[:-1], size, size)
    matrices[..., rows, cols] = packed
    matrices[..., cols, rows] = packed
    return matrices


class _TaskStatistics(DeviceOnlyBuffers):
    """Buffers of one task: ``counts`` ``(C,)`` float64 (0: not collected), ``means`` ``(C, F)`` float64,
    ``covariances`` ``(C, F(F+1)/2)`` float32 (lower triangles, see [`pack_symmetric`])."""

    def __init__(self, num_classes: int, feature_size: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(num_classes, feature_size, dtype=torch.float64))
        self.register_buffer("covariances", torch.zeros(num_classes, feature_size * (feature_size + 1) // 2))


class ClassFeatureStatistics(nn.Module):
    """The class statistics of one adapter, one entry per task (the tasks' classes are disjoint).

    Args:
        feature_size: F, the size of the pooled feature the image-side head reads.
    """

    def __init__(self, feature_size: int) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.tasks = nn.ModuleList()

    def add_task(self, num_classes: int, device: torch.device | None = None) -> None:
        """Append zeroed statistics for a task of ``num_classes`` classes."""
        self.tasks.append(_TaskStatistics(num_classes, self.feature_size).to(device))

    @torch.no_grad()
    def store(self, task: int, counts: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        """Replace the statistics of task ``task``."""
        stats = self.tasks[task]
        stats.counts.copy_(counts)
        stats.means.copy_(means)
        stats.covariances.copy_(pack_symmetric(covariances))

    def collected(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C_seen, F)`` means and ``(C_seen, F, F)`` covariances of all tasks, in logit-column order.

        Raises:
            ValueError: some task's statistics were never collected.
        """
        missing = [task for task, stats in enumerate(self.tasks) if not bool((stats.counts > 0).all())]
        if missing or not len(self.tasks):
            raise ValueError(
                f"No class statistics for task(s) {missing or 'any'}: run `model.update_class_statistics(...)` on "
                "each task's training data after training it."
            )
        return (
            torch.cat([stats.means for stats in self.tasks]),
            unpack_symmetric(torch.cat([stats.covariances for stats in self.tasks]), self.feature_size),
        )
