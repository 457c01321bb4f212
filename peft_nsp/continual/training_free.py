# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Classifiers that train nothing, run class-incrementally on fixed features: what a user would pick instead.

A frozen backbone's features are computed once; a classifier is then fitted task by task and every seen task is
evaluated after each, into the same accuracy matrix as a prompted run. Two classifiers fit the protocol:
[`~peft_nsp.tuner.AnalyticClassifier`] (random-projection ridge regression, RanPAC-style) and
[`NearestClassMean`] (cosine nearest class mean, SimpleCIL-style).

Example:

```python
>>> head = AnalyticClassifier(features.shape[1], projection_size=5000, seed=0)
>>> metrics = fit_tasks_on_features(head, tasks, (features, labels), {"test": (test_features, test_labels)})
>>> print(metrics["test"].format_table())
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch.nn import functional as F

from .metrics import ContinualMetrics, count_correct


class TaskClassifier(Protocol):
    """A class-incremental classifier on fixed features."""

    def add_task(self, num_classes: int) -> int:
        """Add a task of ``num_classes`` columns; returns its index."""

    def fit_task(self, features: torch.Tensor, columns: torch.Tensor) -> None:
        """Fit the newest task on ``(N, F)`` features whose ``(N,)`` columns are 0 … C_t − 1."""

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` → ``(N, C_seen)`` scores over every fitted class, tasks in order (argmax: the prediction)."""


class NearestClassMean:
    """Cosine nearest class mean (SimpleCIL): each class is its L2-normalised mean feature; a sample's score for a
    class is the cosine similarity to it. Trains nothing; the prototypes of old classes never change."""

    def __init__(self) -> None:
        self.prototypes: list[torch.Tensor] = []
        """``(F,)`` unit-norm mean feature of every fitted class, tasks in order."""
        self.task_sizes: list[int] = []

    def add_task(self, num_classes: int) -> int:
        if num_classes < 1:
            raise ValueError(f"A task needs at least one class, got {num_classes}.")
        if len(self.prototypes) != sum(self.task_sizes):
            raise ValueError("Fit the newest task with `fit_task` before adding another.")
        self.task_sizes.append(num_classes)
        return len(self.task_sizes) - 1

    def fit_task(self, features: torch.Tensor, columns: torch.Tensor) -> None:
        """Store the unit-norm mean of each of the newest task's classes.

        Raises:
            ValueError: no task waiting, non-finite features, or a class of the task without samples.
        """
        if not self.task_sizes or len(self.prototypes) == sum(self.task_sizes):
            raise ValueError("Every task is fitted already: add a task with `add_task` first.")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("The task's features hold NaN/Inf values; nothing was changed.")
        size = self.task_sizes[-1]
        present = set(columns.tolist())
        if present != set(range(size)):
            raise ValueError(
                f"The task has {size} classes: every column 0 … {size - 1} needs samples and no other column may "
                f"occur; got columns {sorted(present)}."
            )
        self.prototypes += [F.normalize(features[columns == c].mean(0), dim=0) for c in range(size)]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ torch.stack(self.prototypes).T.to(features.device, features.dtype)


@torch.no_grad()
def fit_tasks_on_features(
    classifier: TaskClassifier,
    tasks: Sequence[Sequence[int]],
    train: tuple[torch.Tensor, torch.Tensor],
    evaluations: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, ContinualMetrics]:
    """Fit ``classifier`` task by task and evaluate every seen task after each.

    Args:
        classifier: a [`TaskClassifier`] with no tasks yet (a `torch.nn.Module` is put in evaluation mode).
        tasks: the global class ids of every task, in training order.
        train: ``(N, F)`` features and ``(N,)`` global class ids of the training data.
        evaluations: name → ``(n, F)`` features and ``(n,)`` class ids; each is scored over all seen classes.

    Returns:
        name → the accuracy matrix of that evaluation set.
    """
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()
    train_x, train_y = train
    metrics = {name: ContinualMetrics() for name in evaluations}
    order: list[int] = []
    for t, classes in enumerate(tasks):
        classes = [int(c) for c in classes]
        mask = torch.isin(train_y, torch.tensor(classes))
        column_of = {c: i for i, c in enumerate(classes)}
        classifier.add_task(len(classes))
        classifier.fit_task(train_x[mask], torch.tensor([column_of[int(c)] for c in train_y[mask]]))
        order += classes
        task_of_class = {c: j for j, task in enumerate(tasks[: t + 1]) for c in task}
        for name, (eval_x, eval_y) in evaluations.items():
            seen = torch.isin(eval_y, torch.tensor(order))
            predicted = torch.tensor(order)[classifier(eval_x[seen]).argmax(-1).cpu()]
            metrics[name].record_task(
                t, *count_correct(predicted.tolist(), eval_y[seen].tolist(), task_of_class, t + 1)
            )
    return metrics
