# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The continual classifiers: logit columns grouped by task, concatenated over all tasks seen."""

from __future__ import annotations

import torch
from torch import nn


HEAD_INITS = ("trunc_normal", "pytorch", "authors")


class TaskHeads(nn.Module):
    """Base of the continual classifiers: one group of logit columns per task, in task order.

    The class of each column is recorded by the tuner (``VPTNSPConfig.task_classes`` and ``class_names``); subclasses
    hold weights, report ``task_sizes`` and grow with [`~TaskHeads.add_task`].
    """

    @property
    def task_sizes(self) -> list[int]:
        """Number of classes of every task, in task order."""
        raise NotImplementedError

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    def add_task(self, num_classes: int, class_embeddings: torch.Tensor | None = None) -> int:
        """Append the columns of a task of ``num_classes`` classes; returns the task index.

        ``class_embeddings`` (``(num_classes, E)``) are the text classifier's; other heads refuse them.
        """
        raise NotImplementedError

    def task_columns(self, task: int) -> slice:
        """Output columns of task ``task`` (negative indices count from the newest)."""
        sizes = self.task_sizes
        task = range(len(sizes))[task]
        start = sum(sizes[:task])
        return slice(start, start + sizes[task])

    def freeze_old_heads(self) -> None:
        """Re-freeze the weights of older tasks (PEFT's ``set_adapter`` makes every adapter weight trainable)."""

    def alignment_parameters(self) -> list[nn.Parameter]:
        """The weights classifier alignment retrains on sampled features (none by default)."""
        return []


class ContinualClassifier(TaskHeads):
    """One ``nn.Linear`` per task over that task's classes; only the newest head trains.

    Args:
        in_features: feature size (hidden size for a backbone, the replaced classifier's input size otherwise).
        init: weight initialisation of a new head: ``"trunc_normal"`` (std 0.02, zero bias), ``"pytorch"``
            (``nn.Linear``'s own), or ``"authors"``: what the authors' code does, the first head ``"trunc_normal"``,
            the second a copy of the (trained) first one when the two tasks have as many classes, later heads
            ``"pytorch"``.
        temperature: the logits are the heads' outputs divided by it (the training temperature), so
            ``softmax(logits)`` are the probabilities the model was trained to output.
    """

    def __init__(self, in_features: int, init: str = "trunc_normal", temperature: float = 1.0) -> None:
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"`init` must be one of {list(HEAD_INITS)}, got {init!r}.")
        self.in_features = in_features
        self.init = init
        self.temperature = temperature
        self.heads = nn.ModuleList()

    def add_task(self, num_classes: int, class_embeddings: torch.Tensor | None = None) -> int:
        if class_embeddings is not None:
            raise ValueError("Linear heads take no `class_embeddings` (those are for `classifier='text'`).")
        reference = next(self.parameters(), None)
        head = nn.Linear(self.in_features, num_classes)
        task = len(self.heads)
        if self.init == "trunc_normal" or (self.init == "authors" and task == 0):
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        elif self.init == "authors" and task == 1 and self.heads[0].out_features == num_classes:
            head.load_state_dict(self.heads[0].state_dict())
        if reference is not None:
            head.to(device=reference.device, dtype=reference.dtype)
        for old in self.heads:
            old.requires_grad_(False)
        self.heads.append(head)
        return len(self.heads) - 1

    def freeze_old_heads(self) -> None:
        for old in list(self.heads)[:-1]:
            old.requires_grad_(False)

    def alignment_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    @property
    def task_sizes(self) -> list[int]:
        return [head.out_features for head in self.heads]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, in_features)`` → ``(B, num_seen_classes)`` logits of all heads (outputs / temperature)."""
        return torch.cat([head(features.to(head.weight.dtype)) for head in self.heads], dim=-1) / self.temperature
