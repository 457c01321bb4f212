# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The task plan of a class-incremental run: which class names every task trains, in order, checked against the
data before anything is trained."""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from ..continual.data import present_class_names, select_classes, split_classes
from .config import ClassIncrementalConfig


def plan_tasks(
    config: ClassIncrementalConfig,
    class_names: Sequence[str],
    seed: int,
    inherited: Sequence[Sequence[str]] = (),
) -> list[list[str]]:
    """The class names of every task: those of a continued adapter (``inherited``) first, then the dataset's other
    classes, cut into ``config.num_tasks`` equal tasks (seeded shuffle, or ``config.class_order``; one task when
    ``config.joint``).

    Args:
        config: the run's settings.
        class_names: the `ClassLabel` names of the datasets, by class id.
        seed: seeds the shuffle (``NSPConfig.seed``).
        inherited: the class names of every task of the continued adapter.
    """
    known = {name for task in inherited for name in task}
    missing = sorted(known - set(class_names))
    if missing:
        raise ValueError(
            f"The datasets lack classes of the continued adapter: {missing[:10]}. A continued run measures every task, "
            "so `train_dataset`/`test_dataset` need the earlier classes (their test data) too."
        )
    new_ids = [i for i, name in enumerate(class_names) if name not in known]
    if config.class_order is not None:
        order = config.class_order
        if not set(order) <= set(new_ids):
            raise ValueError(
                f"`class_order` must list distinct new class ids of the dataset ({new_ids}), in training order: all "
                "of them, or the subset to train."
            )
        tasks = [
            [order[i] for i in task] for task in split_classes(len(order), config.num_tasks, seed, range(len(order)))
        ]
    else:
        tasks = [[new_ids[i] for i in task] for task in split_classes(len(new_ids), config.num_tasks, seed)]
    if config.joint:
        tasks = [[c for task in tasks for c in task]]
    return [*[list(task) for task in inherited], *[[class_names[c] for c in task] for task in tasks]]


def check_plan(
    planned: Sequence[Sequence[str]], first_new: int, train_dataset: Dataset, test_dataset: Dataset, label_column: str
) -> None:
    """Refuse a plan whose new tasks have classes without training samples; warn for classes without test data."""
    ids_of = {name: i for i, name in enumerate(train_dataset.features[label_column].names)}
    new_names = {name for task in planned[first_new:] for name in task}
    untrainable = sorted(new_names - set(present_class_names(train_dataset, label_column)))
    if untrainable:
        raise ValueError(
            f"`train_dataset` has no samples of classes {untrainable[:10]}, which the task split includes: add their "
            "images, or drop them from the `ClassLabel` (e.g. select the other classes and `cast_column` to a "
            "`ClassLabel` without them)."
        )
    for task in planned:  # warns for classes without test data
        select_classes(test_dataset, label_column, [ids_of[n] for n in task], "test_dataset")
