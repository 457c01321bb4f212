# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""What a class-incremental run is made of, below the trainer: datasets, classes and task splits, the run on disk
(stages, record, model card), the accuracy matrix and its metrics (also as an `evaluate` module), plots, the
benchmarks' class names, classifiers that train nothing run on fixed features. The loop over tasks is `peft_nsp.loop`, above the trainer.

Names are imported on first use (as PEFT does for optional backends), so importing a light module of this package,
e.g. `peft_nsp.continual.stages`, does not load the `Trainer` or matplotlib.
"""

from __future__ import annotations

from .._lazy import lazy_exports


#: Public name → the module that defines it.
_EXPORTS = {
    "benchmark_class_names": "class_names",
    "benchmark_text_templates": "class_names",
    "readable_class_names": "class_names",
    "load_continual_metric": "continual_learning_metric",
    "ClassIdLabels": "data",
    "ImageCollator": "data",
    "check_image_dataset": "data",
    "find_columns": "data",
    "present_class_names": "data",
    "processor_transform": "data",
    "select_classes": "data",
    "split_classes": "data",
    "with_class_ids": "data",
    "ContinualMetrics": "metrics",
    "count_correct": "metrics",
    "plot_accuracy_curve": "plots",
    "plot_accuracy_matrix": "plots",
    "RunRecord": "stages",
    "method_name": "stages",
    "NearestClassMean": "training_free",
    "TaskClassifier": "training_free",
    "fit_tasks_on_features": "training_free",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
