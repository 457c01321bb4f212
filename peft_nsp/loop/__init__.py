# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The class-incremental loop over tasks, above the trainer: [`run_class_incremental`] trains one [`NSPTrainer`] per
task, measures every seen task after each and writes a resumable stage per task (`peft_nsp.continual.stages`)."""

from .class_incremental import ContinualResult, run_class_incremental
from .config import ClassIncrementalConfig
from .plan import plan_tasks
from .resume import load_stage


__all__ = ["ClassIncrementalConfig", "ContinualResult", "load_stage", "plan_tasks", "run_class_incremental"]
