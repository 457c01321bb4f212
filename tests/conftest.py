# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Fixtures shared by the tests (the helpers live in `testing_utils.py`)."""

from __future__ import annotations

import pytest
import torch
from testing_utils import IMAGE_SIZE


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
