# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental learning: task splits, the training loop, head refinement, the accuracy matrix and its
metrics, plots, the benchmarks' class names."""

from .class_names import benchmark_class_names, benchmark_text_templates, readable_class_names
from .data import TaskCollator, check_image_dataset, processor_transform, select_classes, split_classes
from .loop import ContinualResult, evaluate_seen_tasks, run_class_incremental
from .metrics import ContinualMetrics, count_correct
from .plots import plot_accuracy_curve, plot_accuracy_matrix
from .refinement import HeadRefinementArguments, refine_head, sample_class_features

__all__ = [
    "ContinualMetrics",
    "ContinualResult",
    "HeadRefinementArguments",
    "TaskCollator",
    "benchmark_class_names",
    "benchmark_text_templates",
    "check_image_dataset",
    "count_correct",
    "evaluate_seen_tasks",
    "plot_accuracy_curve",
    "plot_accuracy_matrix",
    "processor_transform",
    "readable_class_names",
    "refine_head",
    "run_class_incremental",
    "sample_class_features",
    "select_classes",
    "split_classes",
]
