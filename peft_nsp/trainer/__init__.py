# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
from .config import NSPConfig, NSPTrainingArguments
from .trainer import NSPTrainer, NullSpaceTrainer

__all__ = ["NSPConfig", "NSPTrainer", "NSPTrainingArguments", "NullSpaceTrainer"]
