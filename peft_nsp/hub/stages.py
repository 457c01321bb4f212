# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Deprecated (peft-nsp 0.1): the run's layout is [`peft_nsp.continual.stages`]."""

import warnings

from ..continual.stages import (  # noqa: F401
    CARD_FILE,
    SEQUENCE_FILE,
    finished_stages,
    read_record,
    stage_digest,
    stage_files,
    stage_revision,
)


warnings.warn(
    "`peft_nsp.hub.stages` is deprecated: import from `peft_nsp.continual.stages`.", FutureWarning, stacklevel=2
)
