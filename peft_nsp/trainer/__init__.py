# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
from .config import NSPConfig
from .trainer import NSPTrainer

__all__ = ["NSPConfig", "NSPTrainer"]
