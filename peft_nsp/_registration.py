# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Teach PEFT the `VPT_NSP` type. PEFT 0.21 registers only names already in its `PeftType` enum."""

from __future__ import annotations

from aenum import extend_enum
from peft.utils.peft_types import PeftType


METHOD_NAME = "vpt_nsp"

if METHOD_NAME.upper() not in PeftType.__members__:
    extend_enum(PeftType, METHOD_NAME.upper(), METHOD_NAME.upper())

PEFT_TYPE = PeftType[METHOD_NAME.upper()]


def register_with_peft(config_cls: type, model_cls: type) -> None:
    """Register the method once; a repeated import (or `importlib.reload`) is a no-op."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if PEFT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=METHOD_NAME, config_cls=config_cls, model_cls=model_cls)
