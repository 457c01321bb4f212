# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The analytic (closed-form) classifier: ridge regression on random ReLU features, class-incremental by construction.

RanPAC-style (McDonnell et al., NeurIPS 2023, https://huggingface.co/papers/2307.02251): a fixed random projection
``R`` (F × M) turns a pooled feature ``x`` into ``h = relu(x R)``; the classifier is
``W = (G + λ I)⁻¹ Q`` with ``G = Σ h hᵀ`` (M × M) and ``Q = Σ h yᵀ`` (M × C, ``y`` one-hot over the seen classes).
Both sums run over every task seen so far, so after task t the solution equals the joint solution on all the
features it saw (with the current λ). λ is chosen per task on a held-out part of the task's training data (every
fifth sample), as RanPAC does, by the squared error of a ridge fit on the rest. The math lives in pure functions;
[`AnalyticClassifier`] keeps the sums as buffers of the adapter (``G`` packed, in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._torch_utils import DeviceOnlyBuffers
from .class_statistics import pack_symmetric, unpack_symmetric
from .heads import ContinualClassifier, TaskHeads


#: Every ``HOLDOUT_PERIOD``-th sample of a task (by its index in the task's data) is held out to choose λ.
HOLDOUT_PERIOD = 5
#: λ candidates when `analytic_ridge` is None (RanPAC's grid, powers of ten).
DEFAULT_RIDGE_GRID = tuple(10.0**k for k in range(-4, 11))
#: Candidates of the softmax scale fitted on the held-out samples (the probabilities `pipeline` shows).
_SCALE_GRID = torch.logspace(-1, 4, 101, dtype=torch.float64)


def random_relu_features(features: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``relu(x R)``; with an empty projection (M = 0), the features themselves.

    Args:
        features: ``(N, F)`` pooled features.
        projection: ``(F, M)`` random matrix, or an empty tensor.

    Returns:
        ``(N, M)`` (or ``(N, F)``) float32 features.
    """
    features = features.float()
    if projection.numel() == 0:
        return features
    return F.relu(features @ projection.to(features.device, torch.float32))


def one_hot(columns: torch.Tensor, num_columns: int) -> torch.Tensor:
    """``(N,)`` column indices → ``(N, num_columns)`` float64 one-hot targets."""
    return F.one_hot(columns.long(), num_columns).double()


def ridge_solution(gram: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(G + λ I)⁻¹ Q`` by a float64 Cholesky factorisation.

    Args:
        gram: ``(M, M)`` symmetric positive semi-definite ``G``.
        targets: ``(M, C)`` ``Q``.
        ridge: λ ≥ 0.

    Returns:
        ``(M, C)`` float64 weights.

    Raises:
        ValueError: ``G + λ I`` is not positive definite (e.g. λ = 0 with fewer samples than features).
    """
    system = gram.double() + ridge * torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        raise ValueError(
            f"The analytic head's system `G + λI` (λ = {ridge:g}) is singular: it has fewer independent features than "
            "dimensions. Use a ridge `analytic_ridge` > 0 (or None: chosen on held-out data)."
        )
    return torch.cholesky_solve(targets.double(), factor)


#: The smallest λ tried, relative to ``trace(G)``: above it ``G + λI`` is well enough conditioned (≤ 10¹²) for a
#: float64 Cholesky factorisation.
RIDGE_FLOOR = 1e-12


def solvable_ridges(ridges: Sequence[float], gram: torch.Tensor) -> list[float]:
    """The candidates λ ≥ `RIDGE_FLOOR` · trace(G): smaller ones would make the float64 solve numerically singular
    when G has fewer samples than dimensions (a small task, many random features).

    Raises:
        ValueError: no candidate is large enough.
    """
    floor = RIDGE_FLOOR * float(torch.diagonal(gram).sum())
    kept = [ridge for ridge in ridges if ridge >= floor]
    if not kept:
        raise ValueError(
            f"Every `analytic_ridge_grid` value is below {floor:.3g} (10⁻¹² of the trace of G), where the solve becomes "
            "numerically singular: give larger candidates."
        )
    return kept


def held_out_errors(
    fit_features: torch.Tensor,
    fit_targets: torch.Tensor,
    held_out_features: torch.Tensor,
    held_out_targets: torch.Tensor,
    ridges: Sequence[float],
) -> torch.Tensor:
    """Mean squared error on held-out samples of the ridge fit on the others, for every λ.

    With the thin SVD ``H = U S Vᵀ`` of the fit features, ``(HᵀH + λI)⁻¹ Hᵀ Y = V diag(s / (s² + λ)) Uᵀ Y``, so
    all candidates cost one decomposition.

    Args:
        fit_features: ``(n, M)``; fit_targets: ``(n, C)``.
        held_out_features: ``(v, M)``; held_out_targets: ``(v, C)``.
        ridges: the K candidates λ.

    Returns:
        ``(K,)`` float64 errors.
    """
    u, s, vh = torch.linalg.svd(fit_features.double(), full_matrices=False)
    projected_targets = u.T @ fit_targets.double()  # (r, C)
    rotated = held_out_features.double() @ vh.T  # (v, r)
    errors = []
    for ridge in ridges:
        predictions = rotated @ ((s / (s**2 + ridge))[:, None] * projected_targets)
        errors.append(((predictions - held_out_targets.double()) ** 2).mean())
    return torch.stack(errors)


def select_ridge(
    features: torch.Tensor, targets: torch.Tensor, held_out: torch.Tensor, ridges: Sequence[float]
) -> float:
    """Choose λ among ``ridges`` by the held-out error of a fit on the other samples.

    Args:
        features: ``(N, M)`` the task's features; targets: ``(N, C)`` its one-hot targets.
        held_out: ``(N,)`` bool, the samples that score the fits.
        ridges: candidates.

    Returns:
        The chosen λ.
    """
    if not bool(held_out.any()) or bool(held_out.all()):
        raise ValueError(
            f"Choosing the ridge needs held-out samples and fit samples (every {HOLDOUT_PERIOD}th sample is held "
            f"out): this task has {len(held_out)}. Give it at least {HOLDOUT_PERIOD} samples, or set `analytic_ridge`."
        )
    fit, check = features[~held_out], features[held_out]
    errors = held_out_errors(fit, targets[~held_out], check, targets[held_out], ridges)
    return float(ridges[int(errors.argmin())])


def fit_softmax_scale(outputs: torch.Tensor, columns: torch.Tensor) -> float:
    """The scale ``s`` minimising the cross-entropy of ``softmax(s · outputs)`` (a grid over 0.1 … 10⁴).

    Args:
        outputs: ``(v, C)`` ridge outputs of held-out samples; columns: ``(v,)`` their classes.
    """
    losses = [F.cross_entropy(scale * outputs.double(), columns.long()) for scale in _SCALE_GRID]
    return float(_SCALE_GRID[int(torch.stack(losses).argmin())])


@dataclass
class AnalyticTaskFit:
    """What fitting one task computed, before it is committed (see [`AnalyticClassifier.prepare_task`])."""

    gram: torch.Tensor
    """``(M, M)`` float64 accumulated ``G`` including the task."""
    targets: torch.Tensor
    """``(M, C_t)`` float64 ``Q`` block of the task."""
    weights: list[torch.Tensor]
    """``(M, C_j)`` float32 weights of every task ``j ≤ t``."""
    ridge: float
    scale: float
    samples: int


class _AnalyticState(DeviceOnlyBuffers):
    """Buffers shared by all tasks: ``projection`` ``(F, M)`` float32 (fixed), ``gram`` ``(M(M+1)/2,)`` float64
    (packed lower triangle of ``G``: float32 rounding would perturb its small eigenvalues by ~10⁻⁷ of the largest and
    make the small λ a small task selects unsolvable), ``ridge`` and ``scale`` ``()`` float64, ``samples`` ``()``
    float64."""

    def __init__(self, in_features: int, projection_size: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(in_features, projection_size, generator=generator) if projection_size else None
        width = projection_size or in_features
        self.register_buffer("projection", projection if projection is not None else torch.zeros(0))
        self.register_buffer("gram", torch.zeros(width * (width + 1) // 2, dtype=torch.float64))
        self.register_buffer("ridge", torch.zeros((), dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("samples", torch.zeros((), dtype=torch.float64))


class _AnalyticTask(DeviceOnlyBuffers):
    """Buffers of one task: ``targets`` ``(M, C_t)`` float64 (its ``Q`` block), ``weight`` ``(M, C_t)`` float32 (its
    columns of the current solution), ``ridge`` ``()`` float64 (λ chosen when it was fitted) and ``samples`` ``()``
    float64 (its number of samples; 0: not fitted yet)."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("targets", torch.zeros(width, num_classes, dtype=torch.float64))
        self.register_buffer("weight", torch.zeros(width, num_classes))
        self.register_buffer("ridge", torch.zeros((), dtype=torch.float64))
        self.register_buffer("samples", torch.zeros((), dtype=torch.float64))


class AnalyticClassifier(TaskHeads):
    """Closed-form continual classifier: ridge regression on random ReLU features of the pooled feature.

    Evaluation (``model.eval()``) once every task is fitted: ``logits = s · relu(x R) W``, columns in task order,
    ``W`` the joint ridge solution over every fitted task and ``s`` a softmax scale fitted on the newest task's
    held-out samples, scored over every seen class by the solution without them, so ``softmax(logits)`` are
    calibrated probabilities (the argmax is the ridge classifier's). Training (``model.train()``), and evaluation
    during a task before its statistics pass fits it (``evaluate()`` mid-task, early stopping): the logits of
    ``training_heads``, one linear head per task as [`ContinualClassifier`], which give the prompts their training
    signal; the ridge solution is refit by [`~AnalyticClassifier.commit`] after the task. Usable on its own, on any features (e.g. a frozen backbone's, no prompts).

    Args:
        in_features: F, the pooled feature size.
        projection_size: M, random features (0: ridge regression on the features themselves).
        ridge: λ, or ``None`` to choose it per task on held-out samples from ``ridge_grid``.
        ridge_grid: candidates for λ.
        seed: seeds the random projection.
        head_init: initialisation of the training heads.
        temperature: the training heads' temperature (their logits are divided by it while training).
    """

    def __init__(
        self,
        in_features: int,
        projection_size: int = 5000,
        ridge: float | None = None,
        ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID,
        seed: int = 0,
        head_init: str = "trunc_normal",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.width = projection_size or in_features
        self.fixed_ridge = ridge
        self.ridge_grid = tuple(ridge_grid)
        self.training_heads = ContinualClassifier(in_features, init=head_init, temperature=temperature)
        self.state = _AnalyticState(in_features, projection_size, seed)
        self.tasks = nn.ModuleList()

    @property
    def task_sizes(self) -> list[int]:
        return self.training_heads.task_sizes

    @property
    def fitted_tasks(self) -> int:
        """Number of tasks whose features are in the solution."""
        return sum(int(task.samples > 0) for task in self.tasks)

    def add_task(self, num_classes: int, class_embeddings: torch.Tensor | None = None) -> int:
        self.training_heads.add_task(num_classes, class_embeddings)
        self.tasks.append(_AnalyticTask(self.width, num_classes).to(self.state.gram.device))
        return len(self.tasks) - 1

    def freeze_old_heads(self) -> None:
        self.training_heads.freeze_old_heads()

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` pooled features → ``(B, M)`` random ReLU features."""
        return random_relu_features(pooled, self.state.projection)

    def ridge_outputs(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` → ``(B, C_seen)`` ridge-regression outputs ``relu(x R) W`` (float32)."""
        weight = torch.cat([task.weight for task in self.tasks], dim=1)
        return self.features(pooled) @ weight.to(pooled.device)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` → ``(B, C_seen)`` logits: the analytic head's once every task is fitted, else (training, or
        evaluating during a task, before its statistics pass fits it) the training heads'."""
        # Tasks are fitted in order: only the newest can be waiting (one check per batch, not one per task).
        if self.training or (len(self.tasks) > 0 and not bool(self.tasks[-1].samples > 0)):
            return self.training_heads(pooled)
        return self.state.scale.float() * self.ridge_outputs(pooled)

    @torch.no_grad()
    def prepare_task(self, pooled: torch.Tensor, columns: torch.Tensor, held_out: torch.Tensor) -> AnalyticTaskFit:
        """Fit the newest unfitted task without changing anything (commit with [`~AnalyticClassifier.commit`]).

        Args:
            pooled: ``(N, F)`` pooled features of the task's training data (evaluation transforms).
            columns: ``(N,)`` the samples' columns within the task (0 … C_t − 1).
            held_out: ``(N,)`` bool, the samples that choose λ and the softmax scale (they are fitted too).

        Raises:
            ValueError: no task left to fit, non-finite features, a column out of range, a singular system.
        """
        task = self.fitted_tasks
        if task >= len(self.tasks):
            raise ValueError(
                f"Every task of the analytic head is fitted already ({task}): a task's data can be added once (add "
                "a new task with `add_task` first)."
            )
        if not bool(torch.isfinite(pooled).all()):
            raise ValueError(f"The features of task {task} hold NaN/Inf values; the analytic head was not changed.")
        size = self.task_sizes[task]
        if len(columns) == 0 or int(columns.min()) < 0 or int(columns.max()) >= size:
            raise ValueError(f"Task {task} has {size} classes; got sample columns outside 0 … {size - 1} (or none).")
        features = self.features(pooled).double()
        targets = one_hot(columns.to(features.device), size)
        gram = unpack_symmetric(self.state.gram.double(), self.width).to(features.device) + features.T @ features
        held = held_out.to(features.device)
        if self.fixed_ridge is None:
            ridge = select_ridge(features, targets, held, solvable_ridges(self.ridge_grid, gram))
        else:
            ridge = self.fixed_ridge
        block = features.T @ targets
        blocks = [task.targets.to(features.device) for task in self.tasks[:task]] + [block]
        all_targets = torch.cat(blocks, dim=1)
        solution = ridge_solution(gram, all_targets, ridge)
        weights = list(solution.float().split([b.shape[1] for b in blocks], dim=1))
        if not all(bool(torch.isfinite(w).all()) for w in weights):
            raise ValueError(f"The analytic head's solution for task {task} is not finite; nothing was changed.")
        scale = float(self.state.scale)
        if bool(held.any()):
            # The softmax scale: the held-out samples scored over every seen class by the solution without them.
            check = features[held]
            check_columns = columns.to(features.device)[held] + sum(self.task_sizes[:task])
            without = ridge_solution(
                gram - check.T @ check, all_targets - check.T @ one_hot(check_columns, all_targets.shape[1]), ridge
            )
            scale = fit_softmax_scale(check @ without, check_columns)
        return AnalyticTaskFit(gram, block, weights, ridge, scale, len(columns))

    @torch.no_grad()
    def commit(self, fit: AnalyticTaskFit) -> None:
        """Store a prepared fit: the task's ``Q`` block, ``G``, λ, the scale and every task's weights."""
        task = self.fitted_tasks
        device = self.state.gram.device
        self.tasks[task].targets.copy_(fit.targets.to(device))
        self.tasks[task].ridge.fill_(fit.ridge)
        self.tasks[task].samples.fill_(fit.samples)
        for block, weight in zip(self.tasks, fit.weights):
            block.weight.copy_(weight.to(device))
        self.state.gram.copy_(pack_symmetric(fit.gram).to(device))
        self.state.ridge.fill_(fit.ridge)
        self.state.scale.fill_(fit.scale)
        self.state.samples += fit.samples

    def fit_task(self, pooled: torch.Tensor, columns: torch.Tensor, held_out: torch.Tensor | None = None) -> None:
        """[`prepare_task`] then [`commit`]; ``held_out`` defaults to every `HOLDOUT_PERIOD`-th sample."""
        if held_out is None:
            held_out = holdout_mask(torch.arange(len(columns)))
        self.commit(self.prepare_task(pooled, columns, held_out))


def holdout_mask(indices: torch.Tensor) -> torch.Tensor:
    """``(N,)`` sample indices within a task → ``(N,)`` bool: held out to choose λ (every fifth sample)."""
    return indices % HOLDOUT_PERIOD == HOLDOUT_PERIOD - 1


def gather_by_index(
    features: list[torch.Tensor],
    columns: list[torch.Tensor],
    sample_indices: Sequence[int] | None,
    reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``(n, F)`` features and ``(n,)`` columns placed at their sample indices and summed over
    processes: the task's ``(N, F)`` features and ``(N,)`` columns in index order, identical on every rank."""
    device = features[0].device if features else torch.device("cpu")
    local_x = torch.cat(features) if features else torch.zeros(0, width, dtype=torch.float64, device=device)
    local_y = torch.cat(columns) if columns else torch.zeros(0, dtype=torch.long, device=device)
    indices = torch.arange(len(local_y)) if sample_indices is None else torch.as_tensor(list(sample_indices))
    if len(indices) != len(local_y):
        raise ValueError(f"`sample_indices` has {len(indices)} entries for {len(local_y)} samples of the pass.")
    indices = indices.to(device)
    reduce_fn = reduce_fn or (lambda t: t)
    size = int(reduce_fn(torch.tensor([float(len(indices))], dtype=torch.float64, device=device)).item())
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= size):
        raise ValueError(
            f"`sample_indices` must number the task's {size} samples 0 … {size - 1} across processes, got indices "
            f"{int(indices.min())} … {int(indices.max())}."
        )
    x = torch.zeros(size, local_x.shape[1], dtype=torch.float64, device=device).index_add_(0, indices, local_x)
    y = torch.zeros(size, dtype=torch.float64, device=device).index_add_(0, indices, local_y.double())
    count = torch.zeros(size, dtype=torch.float64, device=device).index_add_(
        0, indices, torch.ones(len(indices), dtype=torch.float64, device=device)
    )
    x, y, count = reduce_fn(x), reduce_fn(y), reduce_fn(count)
    if not bool((count == 1).all()):
        raise ValueError(
            "The analytic head needs every sample of the task exactly once across processes: pass `sample_indices` "
            "(the index of each of this process's samples within the task's data) to `update_null_space`."
        )
    return x, y.long()
