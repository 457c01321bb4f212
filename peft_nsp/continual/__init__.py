# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental learning: datasets and task splits, the run on disk (stages), the loop, classifier alignment,
the accuracy matrix and its metrics (also as an `evaluate` module), plots, the benchmarks' class names.

Names are imported on first use (as PEFT does for optional backends), so importing a light module of this package,
e.g. `peft_nsp.continual.stages`, does not load the `Trainer` or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any


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
    "ContinualResult": "loop",
    "run_class_incremental": "loop",
    "ContinualMetrics": "metrics",
    "count_correct": "metrics",
    "plot_accuracy_curve": "plots",
    "plot_accuracy_matrix": "plots",
    "HeadRefinementArguments": "refinement",
    "refine_head": "refinement",
    "sample_class_features": "refinement",
    "RunRecord": "stages",
    "method_name": "stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
