# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The null-space state of one prompted layer for one adapter, kept as buffers so PEFT saves it."""

from __future__ import annotations

import torch

from .._torch_utils import DeviceOnlyBuffers
from .projector import NullSpaceProjector


TASK_WEIGHTINGS = ("size", "equal")


class NullSpaceState(DeviceOnlyBuffers):
    """Accumulated statistics, projectors and the previous prompt of one prompted layer.

    Buffers (all persistent, so they are part of the adapter checkpoint):

    * ``key_covariance`` ``(D, D)`` float64: accumulated ``C1``;
    * ``prompt_covariance`` ``(M, M)`` float64: accumulated ``C2``;
    * ``rows`` ``()`` float64: number of image-token query rows (``B·H·N``) accumulated so far;
    * ``key_projector`` ``(D, D)`` / ``prompt_projector`` ``(M, M)`` float32: ``Proj1`` / ``Proj2``;
    * ``null_dims`` ``(2,)`` int64: dimensions of the two null spaces;
    * ``previous_prompt`` ``(M, D)`` float32: the prompt at the end of the last task (LayerNorm loss);
    * ``tasks_seen`` ``()`` int64: number of tasks folded into the statistics.

    Casting the module (``.half()``, ``.to(dtype)``) leaves these buffers untouched (device moves apply):
    the statistics must stay exact in float64.
    """

    def __init__(self, hidden_size: int, prompt_length: int) -> None:
        super().__init__()
        self.register_buffer("key_covariance", torch.zeros(hidden_size, hidden_size, dtype=torch.float64))
        self.register_buffer("prompt_covariance", torch.zeros(prompt_length, prompt_length, dtype=torch.float64))
        self.register_buffer("rows", torch.zeros((), dtype=torch.float64))
        self.register_buffer("key_projector", torch.eye(hidden_size))
        self.register_buffer("prompt_projector", torch.eye(prompt_length))
        self.register_buffer("null_dims", torch.zeros(2, dtype=torch.int64))
        self.register_buffer("previous_prompt", torch.zeros(prompt_length, hidden_size))
        self.register_buffer("tasks_seen", torch.zeros((), dtype=torch.int64))
        # Host-side copy of `tasks_seen`: the optimizer hooks ask every step and must not sync with the GPU.
        self._tasks_seen_on_host = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._tasks_seen_on_host = int(self.tasks_seen)

    @property
    def has_projectors(self) -> bool:
        """Whether at least one task has been folded in (no projection happens before)."""
        return self._tasks_seen_on_host > 0

    @torch.no_grad()
    def accumulated(
        self, key_sum: torch.Tensor, prompt_sum: torch.Tensor, rows: float, task_weighting: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistics after folding in one task's raw sums (nothing is modified; see [`commit`]).

        Args:
            key_sum: ``(D, D)`` ``Σ rᵀ r`` over the task's rows.
            prompt_sum: ``(M, M)`` ``Σ aᵀ a`` over the same rows.
            rows: number of rows summed.
            task_weighting: ``"size"``: the mean over all rows of all tasks, so tasks weigh by their size (the
                authors' per-batch-normalised sums, up to scale); ``"equal"``: add each task's per-row mean, so every
                task weighs the same.

        Returns:
            The new ``(D, D)`` key and ``(M, M)`` prompt covariances, float64.
        """
        if rows <= 0:
            raise ValueError("Cannot fold in statistics of an empty task: no image-token rows were collected.")
        key_sum = key_sum.double().to(self.key_covariance.device)
        prompt_sum = prompt_sum.double().to(self.prompt_covariance.device)
        if task_weighting == "equal":
            return self.key_covariance + key_sum / rows, self.prompt_covariance + prompt_sum / rows
        if task_weighting == "size":
            total = self.rows + rows
            return (
                (self.key_covariance * self.rows + key_sum) / total,
                (self.prompt_covariance * self.rows + prompt_sum) / total,
            )
        raise ValueError(f"`task_weighting` must be one of {list(TASK_WEIGHTINGS)}, got {task_weighting!r}.")

    @torch.no_grad()
    def commit(
        self,
        key_covariance: torch.Tensor,
        prompt_covariance: torch.Tensor,
        rows: float,
        key: NullSpaceProjector,
        prompt: NullSpaceProjector,
        previous_prompt: torch.Tensor,
    ) -> None:
        """Store a folded-in task: statistics, ``Proj1`` (from ``C1``), ``Proj2`` (from ``C2``), reference prompt."""
        self.key_covariance.copy_(key_covariance)
        self.prompt_covariance.copy_(prompt_covariance)
        self.rows += rows
        self.key_projector.copy_(key.matrix)
        self.prompt_projector.copy_(prompt.matrix)
        self.null_dims.copy_(torch.tensor([key.null_dim, prompt.null_dim]))
        self.previous_prompt.copy_(previous_prompt)
        self.tasks_seen += 1
        self._tasks_seen_on_host += 1
