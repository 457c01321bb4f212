# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Project the update any torch optimizer applies to the prompts: ``u' = Proj2 · u · Proj1``.

Implemented with ``torch.optim.Optimizer`` step hooks, so it works with every optimizer and also inside
``transformers.Trainer``. A step skipped by an fp16 ``GradScaler`` never calls ``optimizer.step`` and
therefore never runs the hooks: nothing is snapshotted or projected for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch


PROJECTION_MODES = ("update", "gradient")


class ProjectionTarget(NamedTuple):
    """A prompt parameter with its projectors."""

    parameter: torch.nn.Parameter
    """``(M, D)`` prompt."""
    prompt_projector: torch.Tensor
    """``(M, M)`` ``Proj2`` (acts on the token dimension: condition 2, ``A_P · ΔP = 0``)."""
    key_projector: torch.Tensor
    """``(D, D)`` ``Proj1`` (acts on the feature dimension: condition 1, ``Q W_k,h ΔPᵀ = 0``)."""


def project(update: torch.Tensor, prompt_projector: torch.Tensor, key_projector: torch.Tensor) -> torch.Tensor:
    """``Proj2 · u · Proj1`` for an ``(M, D)`` update, computed in float32 and returned in ``u``'s dtype."""
    projected = prompt_projector.float() @ update.float() @ key_projector.float()
    return projected.to(update.dtype)


class NullSpaceProjection:
    """Step hooks replacing each prompt's update by its null-space projection.

    Args:
        targets: called at every step; returns the prompts to project now (prompts without projectors,
            i.e. before the first task was folded in, must be left out).
        mode: ``"update"`` (default; right for Adam/AdamW and any adaptive optimizer): snapshot the
            prompts before the step and project ``p_after − p_before`` after it. ``"gradient"``: project
            the gradients before the step (equivalent for plain SGD only).
    """

    def __init__(self, targets: Callable[[], Sequence[ProjectionTarget]], mode: str = "update") -> None:
        if mode not in PROJECTION_MODES:
            raise ValueError(f"Projection `mode` must be one of {PROJECTION_MODES}, got {mode!r}.")
        self.targets = targets
        self.mode = mode
        self.steps_projected = 0
        self._snapshots: list[tuple[ProjectionTarget, torch.Tensor]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> NullSpaceProjection:
        """Register the hooks on ``optimizer`` (the torch optimizer inside an accelerate wrapper)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        if getattr(optimizer, "_vpt_nsp_projection", None) is not None:
            raise ValueError(
                "This optimizer already has a null-space projection attached; call `.remove()` on it first."
            )
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]
        optimizer._vpt_nsp_projection = self
        self._optimizer = optimizer
        return self

    def remove(self) -> None:
        """Unregister the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._optimizer._vpt_nsp_projection = None

    @torch.no_grad()
    def _pre_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        targets = [t for t in self.targets() if t.parameter.requires_grad]
        if self.mode == "gradient":
            for target in targets:
                if target.parameter.grad is not None:
                    target.parameter.grad.copy_(
                        project(target.parameter.grad, target.prompt_projector, target.key_projector)
                    )
            self.steps_projected += bool(targets)
        else:
            self._snapshots = [(target, target.parameter.detach().clone()) for target in targets]

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if self.mode != "update":
            return
        for target, before in self._snapshots:
            update = target.parameter - before
            target.parameter.copy_(before + project(update, target.prompt_projector, target.key_projector))
        self.steps_projected += bool(self._snapshots)
        self._snapshots = []
