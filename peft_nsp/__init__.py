# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""peft-nsp: VPT-NSP² continual learning for vision transformers as a PEFT method.

Importing this package registers the `vpt_nsp` method with PEFT, so `get_peft_model`,
`PeftModel.from_pretrained` and `load_adapter` work with [`VPTNSPConfig`] adapters.
"""

from ._registration import register_with_peft
from .losses import layernorm_consistency_loss
from .tuner import ContinualClassifier, NullSpaceLayerReport, VPTNSPConfig, VPTNSPLayer, VPTNSPModel, VPTNSPModelOutput


register_with_peft(VPTNSPConfig, VPTNSPModel)


def __getattr__(name: str):
    """`NSPConfig`, `NSPTrainer` and the loop load the `Trainer` stack on first use, so `import peft_nsp` stays
    light."""
    if name in ("NSPConfig", "NSPTrainer"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("ClassIncrementalConfig", "ContinualResult", "run_class_incremental"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ClassIncrementalConfig",
    "ContinualClassifier",
    "ContinualResult",
    "NSPConfig",
    "NSPTrainer",
    "NullSpaceLayerReport",
    "VPTNSPConfig",
    "VPTNSPLayer",
    "VPTNSPModel",
    "VPTNSPModelOutput",
    "layernorm_consistency_loss",
    "run_class_incremental",
]
