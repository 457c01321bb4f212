# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Training arguments of [`NullSpaceTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..nullspace.update import PROJECTION_MODES


@dataclass
class NSPTrainingArguments(TrainingArguments):
    r"""[`transformers.TrainingArguments`] plus the knobs of VPT-NSP² training.

    > [!NOTE]
    > Changed default: `remove_unused_columns=False` (image columns are transformed by the collator).

    > Parameters that control the loss

    temperature (`float`, *optional*, defaults to `1.0`):
        Logits are divided by it before the cross-entropy (paper: 28 for 10-split CIFAR-100, 25 for 20-split,
        30 for ImageNet-R and DomainNet).
    ln_loss_weight (`float`, *optional*):
        λ of the LayerNorm consistency loss. Defaults to the adapter's `VPTNSPConfig.ln_loss_weight`; `0` turns it
        off.

    > Parameters that control the projection

    projection (`bool`, *optional*, defaults to `True`):
        Project every prompt update into the null space of earlier tasks. `False` with `ln_loss_weight=0` is the
        VPT-Seq baseline.
    projection_mode (`str`, *optional*, defaults to `"update"`):
        `"update"` projects the change the optimizer applies (right for Adam/AdamW and any adaptive optimizer);
        `"gradient"` projects gradients before the step (equivalent for plain SGD only).
    statistics_batch_size (`int`, *optional*, defaults to `32`):
        Per-device batch size of the statistics pass after each task.

    > Parameters that control the learning-rate schedule

    lr_decay_epochs (`list[float]`, *optional*):
        Epochs at which the learning rate is multiplied by `lr_decay_factor` (the paper's step schedule: `50 80`
        of 100 epochs). When set, it replaces `lr_scheduler_type` and warm-up; needs `num_train_epochs` (not `max_steps`).
    lr_decay_factor (`float`, *optional*, defaults to `0.1`):
        The factor applied at each of `lr_decay_epochs`.
    """

    temperature: float = field(default=1.0, metadata={"help": "Logits are divided by it before the cross-entropy."})
    ln_loss_weight: Optional[float] = field(
        default=None, metadata={"help": "λ of the LayerNorm consistency loss; default: the adapter config's."}
    )
    projection: bool = field(default=True, metadata={"help": "Project prompt updates into the null space."})
    projection_mode: str = field(
        default="update",
        metadata={"help": "What is projected: the optimizer's update or the gradient.", "choices": list(PROJECTION_MODES)},
    )
    statistics_batch_size: int = field(default=32, metadata={"help": "Per-device batch size of the statistics pass."})
    lr_decay_epochs: Optional[list[float]] = field(
        default=None, metadata={"help": "Epochs at which the lr is multiplied by `lr_decay_factor` (paper: 50 80)."}
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "Factor applied at each of `lr_decay_epochs`."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep image columns for the collator (changed default)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}.")
        if self.ln_loss_weight is not None and self.ln_loss_weight < 0:
            raise ValueError(f"`ln_loss_weight` must be ≥ 0, got {self.ln_loss_weight}.")
        if self.projection_mode not in PROJECTION_MODES:
            raise ValueError(f"`projection_mode` must be one of {list(PROJECTION_MODES)}, got {self.projection_mode!r}.")
        if self.lr_decay_epochs:
            if self.max_steps > 0:
                raise ValueError("`lr_decay_epochs` counts epochs: set `num_train_epochs` instead of `max_steps`.")
            if any(not 0 < epoch < self.num_train_epochs for epoch in self.lr_decay_epochs):
                raise ValueError(
                    f"`lr_decay_epochs` must lie strictly between 0 and `num_train_epochs` ({self.num_train_epochs}), "
                    f"got {self.lr_decay_epochs}."
                )
        if not 0 < self.lr_decay_factor <= 1:
            raise ValueError(f"`lr_decay_factor` must be in (0, 1], got {self.lr_decay_factor}.")
        if self.statistics_batch_size < 1:
            raise ValueError(f"`statistics_batch_size` must be ≥ 1, got {self.statistics_batch_size}.")
