# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The continual classifiers: logit columns grouped by task, concatenated over all tasks seen."""

from __future__ import annotations

import torch
from torch import nn


class TaskHeads(nn.Module):
    """Base of the continual classifiers: one group of logit columns per task, in task order.

    The global class id of each column is recorded by the tuner (``VPTNSPConfig.task_classes``); subclasses only
    hold weights and report ``task_sizes``.
    """

    @property
    def task_sizes(self) -> list[int]:
        """Number of classes of every task, in task order."""
        raise NotImplementedError

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    def task_columns(self, task: int) -> slice:
        """Output columns of task ``task`` (negative indices count from the newest)."""
        sizes = self.task_sizes
        start = sum(sizes[:task])
        return slice(start, start + sizes[task])

    def freeze_old_heads(self) -> None:
        """Re-freeze the weights of older tasks (PEFT's ``set_adapter`` makes every adapter weight trainable)."""


class ContinualClassifier(TaskHeads):
    """One ``nn.Linear`` per task over that task's classes; only the newest head trains.

    Args:
        in_features: feature size (hidden size for a backbone, the replaced classifier's input size
            otherwise).
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleList()

    def add_task(self, num_classes: int) -> int:
        """Append a head over ``num_classes`` classes and freeze the older heads. Returns the task index."""
        reference = next(self.parameters(), None)
        head = nn.Linear(self.in_features, num_classes)
        if reference is not None:
            head.to(device=reference.device, dtype=reference.dtype)
        for old in self.heads:
            old.requires_grad_(False)
        self.heads.append(head)
        return len(self.heads) - 1

    def freeze_old_heads(self) -> None:
        for old in list(self.heads)[:-1]:
            old.requires_grad_(False)

    @property
    def task_sizes(self) -> list[int]:
        return [head.out_features for head in self.heads]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, in_features)`` → ``(B, num_seen_classes)`` logits of all heads."""
        return torch.cat([head(features.to(head.weight.dtype)) for head in self.heads], dim=-1)
