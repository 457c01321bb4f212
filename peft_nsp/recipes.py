# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Deprecated (peft-nsp 0.1): the recipes' shared code is [`peft_nsp.scripts`]."""

import warnings

from .scripts import *  # noqa: F401,F403
from .scripts import __all__  # noqa: F401

warnings.warn("`peft_nsp.recipes` is deprecated: import from `peft_nsp.scripts`.", FutureWarning, stacklevel=2)
