# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental learning: task splits, the training loop, the accuracy matrix and its metrics, plots."""

from .data import TaskCollator, check_image_dataset, processor_transform, select_classes, split_classes
from .loop import ContinualResult, evaluate_seen_tasks, run_class_incremental
from .metrics import ContinualMetrics, count_correct
from .plots import plot_accuracy_curve, plot_accuracy_matrix

__all__ = [
    "ContinualMetrics",
    "ContinualResult",
    "TaskCollator",
    "check_image_dataset",
    "count_correct",
    "evaluate_seen_tasks",
    "plot_accuracy_curve",
    "plot_accuracy_matrix",
    "processor_transform",
    "run_class_incremental",
    "select_classes",
    "split_classes",
]
