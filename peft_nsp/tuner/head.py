# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Deprecated (peft-nsp 0.1): the heads are in [`peft_nsp.tuner.heads`]."""

import warnings

from .heads import ContinualClassifier, TaskHeads  # noqa: F401

warnings.warn("`peft_nsp.tuner.head` is deprecated: import from `peft_nsp.tuner.heads`.", FutureWarning, stacklevel=2)
