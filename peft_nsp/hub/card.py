# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Deprecated (peft-nsp 0.1): the model card is [`peft_nsp.continual.card`]."""

import warnings

from ..continual.card import TEMPLATE_PATH, build_model_card, render_model_card, write_model_card  # noqa: F401


warnings.warn("`peft_nsp.hub.card` is deprecated: import from `peft_nsp.continual.card`.", FutureWarning, stacklevel=2)
