# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Pure functions turning an accumulated statistic ``C`` (K × K, symmetric PSD) into a projector.

``Proj = η·B + (1 − η)·I`` with ``B = U0 U0ᵀ / ‖U0 U0ᵀ‖_F`` and ``U0`` the eigenvectors of the null space
(ALGORITHM.md, "From statistics to projectors").
"""

from __future__ import annotations

from typing import NamedTuple

import torch


#: Curves with at least this many points are smoothed and trimmed before the curvature search.
ADAPTIVE_SMOOTHING_MIN_POINTS = 128
ADAPTIVE_SMOOTHING_SIGMA = 10.0
ADAPTIVE_TRIM_FRACTION = 0.015


class NullSpaceProjector(NamedTuple):
    """A projector with the information needed to report it."""

    matrix: torch.Tensor
    """``(K, K)`` float64 projector ``η·B + (1 − η)·I``."""
    null_dim: int
    """Number of eigen-directions in the null space (``K − split_index``)."""
    split_index: int
    """``i*``: eigen-directions with index ≥ ``i*`` (values sorted descending) form the null space."""


def gaussian_smooth(values: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """1-D Gaussian filter with half-sample symmetric ("reflect") boundaries.

    Args:
        values: ``(K,)`` curve.
        sigma: standard deviation of the kernel, in points.
        truncate: the kernel is cut at ``truncate · sigma`` points on each side.

    Returns:
        ``(K,)`` smoothed curve, same dtype.
    """
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    size = values.shape[0]
    # Reflect indices (d c b a | a b c d | d c b a) with period 2K, valid for any radius.
    index = torch.arange(-radius, size + radius, device=values.device) % (2 * size)
    index = torch.where(index >= size, 2 * size - 1 - index, index)
    windows = values[index].unfold(0, 2 * radius + 1, 1)
    return windows @ kernel


def adaptive_split_index(values: torch.Tensor, offset: float = 0.0) -> int:
    """``i*`` of the ``adaptive`` rule: the point of largest curvature of the eigenvalue curve.

    For ``K ≥ 128`` the curve is smoothed (Gaussian, σ = 10) and 1.5 % of the second-difference points
    are ignored at each end; smaller curves (the M × M case) are used as they are. The argmax of the
    second difference is shifted back by half the points lost (trim + one per difference), its value is
    the threshold, and ``i*`` is the last index whose value reaches it.

    Args:
        values: ``(K,)`` eigenvalues sorted in descending order.
        offset: moves ``i*`` right: a fraction in ``[0, 1)`` of the ``K − i*`` null-space points, or a
            whole count ``≥ 1``.

    Returns:
        ``i*`` in ``[0, K − 1]``, so the null space is never empty.
    """
    size = values.shape[0]
    if size < 3:
        return size - 1
    if size >= ADAPTIVE_SMOOTHING_MIN_POINTS:
        curve = gaussian_smooth(values, ADAPTIVE_SMOOTHING_SIGMA)
        trim = int(size * ADAPTIVE_TRIM_FRACTION)
    else:
        curve, trim = values, 0
    second_diff = curve.diff().diff()
    window = second_diff[trim : second_diff.shape[0] - trim]
    knee = int(torch.argmax(window)) + trim + 1
    threshold = values[knee]
    split = int((values >= threshold).sum()) - 1
    return _apply_offset(split, size, offset)


def times_split_index(values: torch.Tensor, factor: float) -> int:
    """``i*`` of the ``times`` rule: the null space holds the values ``≤ factor · s_min``.

    Args:
        values: ``(K,)`` eigenvalues sorted in descending order.
        factor: ``c ≥ 1``.

    Returns:
        ``i*`` in ``[0, K − 1]``.
    """
    below = values <= factor * values[-1]
    return int(torch.nonzero(below)[0])


def _apply_offset(split: int, size: int, offset: float) -> int:
    if offset >= 1:
        split += int(offset)
    else:
        split += int(offset * (size - split))
    return min(split, size - 1)


def null_space_projector(
    statistic: torch.Tensor, eta: float, mode: str = "adaptive", offset: float = 0.0, times_factor: float = 1.0
) -> NullSpaceProjector:
    """Projector onto the (approximate) null space of an accumulated statistic.

    Args:
        statistic: ``(K, K)`` symmetric PSD matrix (``C1`` or ``C2``).
        eta: blending weight η in ``[0, 1]``; 1 is the pure (normalised) null space.
        mode: ``"adaptive"`` or ``"times"``.
        offset: ``adaptive`` only, see [`adaptive_split_index`].
        times_factor: ``times`` only, see [`times_split_index`].

    Returns:
        [`NullSpaceProjector`] with a ``(K, K)`` float64 matrix.
    """
    stat = statistic.double()
    stat = 0.5 * (stat + stat.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(stat)
    # A PSD statistic's zero eigenvalues come out as tiny negatives; they would break `times`' c · s_min.
    values = eigenvalues.flip(0).clamp_min(0.0)
    vectors = eigenvectors.flip(1)
    if mode == "adaptive":
        split = adaptive_split_index(values, offset)
    elif mode == "times":
        split = times_split_index(values, times_factor)
    else:
        raise ValueError(f"`mode` must be 'adaptive' or 'times', got {mode!r}.")
    null_vectors = vectors[:, split:]
    basis = null_vectors @ null_vectors.T
    # ‖U0 U0ᵀ‖_F = sqrt(k) for orthonormal U0; computing it keeps the formula literal.
    basis = basis / torch.linalg.matrix_norm(basis, ord="fro")
    identity = torch.eye(stat.shape[0], dtype=stat.dtype, device=stat.device)
    matrix = eta * basis + (1.0 - eta) * identity
    return NullSpaceProjector(matrix=matrix, null_dim=stat.shape[0] - split, split_index=split)
