# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
from .config import NSPTrainingArguments
from .trainer import NullSpaceTrainer

__all__ = ["NSPTrainingArguments", "NullSpaceTrainer"]
