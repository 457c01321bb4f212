# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Share a class-incremental run on the Hub: every stage a commit and a ``task-<t>`` branch, with a model card.

``task-<t>`` (tasks counted from 0) names both the local stage folder ``output_dir/tasks/task-<t>`` and the Hub
branch holding the model after task ``t``. From the shell: ``python -m peft_nsp.hub push OUTPUT_DIR
--hub_model_id ID`` and ``python -m peft_nsp.hub materialize SOURCE OUTPUT_DIR --revision task-<t>``. This package
does the network work only; the run's layout is `peft_nsp.continual.stages`, the card `peft_nsp.continual.card`.
"""

from ..continual.card import build_model_card, write_model_card
from ..continual.stages import finished_stages, stage_revision
from .push import HubPushError, PushedStage, push_to_hub, push_with_deadline
from .resume import materialize_stage
from .store import HubStageStore, hub_unreachable, hub_unreachable_error


__all__ = [
    "HubPushError",
    "HubStageStore",
    "PushedStage",
    "build_model_card",
    "finished_stages",
    "hub_unreachable",
    "hub_unreachable_error",
    "materialize_stage",
    "push_to_hub",
    "push_with_deadline",
    "stage_revision",
    "write_model_card",
]
