# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Teach PEFT the `VPT_NSP` type (PEFT 0.21 registers only names already in its `PeftType` enum), and make PEFT's
reader of ``adapter_config.json`` name a damaged file."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from aenum import extend_enum
from peft.config import PeftConfigMixin
from peft.utils.peft_types import PeftType


METHOD_NAME = "vpt_nsp"

if METHOD_NAME.upper() not in PeftType.__members__:
    extend_enum(PeftType, METHOD_NAME.upper(), METHOD_NAME.upper())

PEFT_TYPE = PeftType[METHOD_NAME.upper()]


def register_with_peft(config_cls: type, model_cls: type) -> None:
    """Register the method once, and name damaged config files; a repeated import (or `importlib.reload`) is a
    no-op."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if PEFT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=METHOD_NAME, config_cls=config_cls, model_cls=model_cls)
    _name_damaged_config_files()


class DamagedAdapterConfigError(json.JSONDecodeError):
    """An ``adapter_config.json`` that is not valid JSON (half-written, truncated, edited): the same exception type
    as before, with a message that names the file and the way out."""

    def __init__(self, path: str | os.PathLike, error: json.JSONDecodeError) -> None:
        super().__init__(
            f"`{path}` is not valid JSON, so the adapter cannot be loaded: the file is damaged or half-written "
            f"({error.msg}). Restore it from where the adapter came from (its Hub revision, a copy, or the run's "
            "stage folder)",
            error.doc,
            error.pos,
        )


def _name_damaged_config_files() -> None:
    """PEFT parses ``adapter_config.json`` (`PeftConfig._get_peft_type`, `from_pretrained`) before any code of ours
    runs, and a damaged file fails there with a bare `JSONDecodeError`. PEFT offers no hook, so its reader is wrapped
    once: the error keeps its type and gains the file's name. Valid files load exactly as before."""
    original = PeftConfigMixin.__dict__["from_json_file"].__func__
    if getattr(original, "names_damaged_files", False):
        return

    @functools.wraps(original)
    def from_json_file(cls: type, path_json_file: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return original(cls, path_json_file, **kwargs)
        except json.JSONDecodeError as error:
            raise DamagedAdapterConfigError(path_json_file, error) from error

    from_json_file.names_damaged_files = True
    PeftConfigMixin.from_json_file = classmethod(from_json_file)
