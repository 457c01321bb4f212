# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
from .config import NSPConfig


def __getattr__(name: str):
    """`NSPTrainer` loads the `Trainer` stack (evaluate, datasets, accelerate) on first use: `NSPConfig` stays light."""
    if name == "NSPTrainer":
        from .trainer import NSPTrainer

        return NSPTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NSPConfig", "NSPTrainer"]
