# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""[`NSPConfig`]: the training arguments of [`NSPTrainer`]."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
from transformers import TrainingArguments

from ..nullspace.update import PROJECTION_MODES
from ..tuner.classifier_alignment import ClassifierAlignmentArguments


WEIGHT_DECAY_MODES = ("decoupled", "l2")
#: Adam-family `optim` values `weight_decay_mode="l2"` replaces by `torch.optim.Adam`.
_ADAM_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


@dataclass
class NSPConfig(ClassifierAlignmentArguments, TrainingArguments):
    r"""[`transformers.TrainingArguments`] plus the knobs of VPT-NSP² training (one task per [`NSPTrainer`]).

    > [!NOTE]
    > Changed defaults: `remove_unused_columns=False` (image columns are transformed by the collator),
    > `label_names=["labels"]` (class ids, also for a backbone without a classifier) and `dataloader_pin_memory`
    > on only where CUDA is available (pinning without it only warns, once per DataLoader).

    > Parameters that control the loss

    temperature (`float`, *optional*, defaults to `1.0`):
        The training temperature: the cross-entropy is taken of the heads' outputs divided by it (paper: 28 for
        10-split CIFAR-100, 25 for 20-split, 30 for ImageNet-R and DomainNet). A new adapter records it
        (`VPTNSPConfig.temperature`) and its logits are divided by it everywhere (`pipeline`, `predict`); a continued
        adapter must be trained at its own.
    ln_loss_weight (`float`, *optional*):
        λ of the LayerNorm consistency loss (tasks after the first). Defaults to `1.0` (the paper's) with the
        projection and to `0` without it (VPT-Seq, as the authors' code).

    > Parameters that control the projection

    projection (`bool`, *optional*, defaults to `True`):
        Project every prompt update into the null space of earlier tasks. `False` is the VPT-Seq baseline (with
        `ln_loss_weight` 0 unless given).
    projection_mode (`str`, *optional*, defaults to `"update"`):
        `"update"` projects the change the optimizer applies (right for Adam/AdamW and any adaptive optimizer);
        `"gradient"` projects gradients before the step (equivalent for plain SGD only).
    statistics_batch_size (`int`, *optional*, defaults to `32`):
        Per-device batch size of the passes over the task's training data after training (null-space statistics,
        class statistics).

    > Parameters that control the optimizer and the schedule

    weight_decay_mode (`str`, *optional*, defaults to `"decoupled"`):
        `"decoupled"`: the `optim` you chose, with the `Trainer`'s decay groups. `"l2"`: `torch.optim.Adam` with
        `weight_decay` added to the gradient before the moments, on every trained tensor (head biases included):
        the authors' optimizer. Needs an Adam-family `optim`.
    lr_decay_epochs (`list[float]`, *optional*):
        Epochs at which the learning rate is multiplied by `lr_decay_factor` (a step schedule). When set, it
        replaces `lr_scheduler_type` and warm-up; needs `num_train_epochs` (not `max_steps`).
    lr_decay_factor (`float`, *optional*, defaults to `0.1`):
        The factor applied at each of `lr_decay_epochs`.
    dataset_repeats (`int`, *optional*, defaults to `1`):
        The training data is repeated this many times per epoch, reshuffled as one list (the authors' "expand
        times": 10 epochs over data repeated 10 times).

    > Parameters that control classifier alignment

    classifier_alignment (`bool`, *optional*, defaults to `False`):
        After each task, store the per-class mean and covariance of the task's features in the adapter and retrain
        every head (and CLIP's image projection) on features sampled from all seen classes' Gaussians
        ([`align_classifier`], the `alignment_*` settings). It removes the bias of each head towards its own task; the
        paper's CLIP-NSP² does it after every task. Turns on `VPTNSPConfig.class_statistics` for a new adapter.
        Needs heads that train: `VPTNSPConfig(classifier="linear")` (or `"text"`); the analytic head, the default,
        is the solution over every seen class already and refuses it.
    alignment_epochs, alignment_learning_rate, alignment_momentum, alignment_nesterov, alignment_weight_decay,
    alignment_samples_per_class, alignment_batch_size, alignment_covariance_ridge:
        Classifier alignment's settings, see [`ClassifierAlignmentArguments`].

    > Parameters that control a whole run ([`run_class_incremental`] and the recipes)

    resume_with_changed_settings (`bool`, *optional*, defaults to `False`):
        Resuming a run whose recorded settings differ from these is refused; `True` applies the new settings from the
        next task on and records the change per task.

    > Parameters that control the data

    image_column (`str`, *optional*):
        The datasets' image column (default: the one `datasets.Image` column).
    label_column (`str`, *optional*):
        The datasets' label column (default: the one `ClassLabel` column; among several `label`, `labels`,
        `fine_label`).
    """

    temperature: float = field(
        default=1.0,
        metadata={"help": "Training temperature: the heads' outputs are divided by it (saved in the adapter)."},
    )
    ln_loss_weight: Optional[float] = field(
        default=None, metadata={"help": "λ of the LayerNorm consistency loss; default: 1 with the projection, else 0."}
    )
    projection: bool = field(default=True, metadata={"help": "Project prompt updates into the null space."})
    projection_mode: str = field(
        default="update",
        metadata={
            "help": "What is projected: the optimizer's update or the gradient.",
            "choices": list(PROJECTION_MODES),
        },
    )
    statistics_batch_size: int = field(
        default=32, metadata={"help": "Per-device batch size of the passes over the task's data after training."}
    )
    weight_decay_mode: str = field(
        default="decoupled",
        metadata={
            "help": "`decoupled` (the chosen `optim`) or `l2` (torch Adam, decay added to the gradient, on every "
            "trained tensor: the authors').",
            "choices": list(WEIGHT_DECAY_MODES),
        },
    )
    lr_decay_epochs: Optional[list[float]] = field(
        default=None, metadata={"help": "Epochs at which the lr is multiplied by `lr_decay_factor`."}
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "Factor applied at each of `lr_decay_epochs`."})
    dataset_repeats: int = field(
        default=1, metadata={"help": "Repeat the training data this many times per epoch (the authors' expand times)."}
    )
    classifier_alignment: bool = field(
        default=False,
        metadata={"help": "After each task, retrain the heads on features sampled from all seen classes."},
    )
    resume_with_changed_settings: bool = field(
        default=False, metadata={"help": "Resume a run whose recorded settings differ (the change is recorded)."}
    )
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (default: the Image feature)."})
    label_column: Optional[str] = field(
        default=None, metadata={"help": "Label column (default: the ClassLabel feature)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep image columns for the collator (changed default)."}
    )
    label_names: Optional[list[str]] = field(
        default_factory=lambda: ["labels"], metadata={"help": "The batch key holding the class ids (changed default)."}
    )
    dataloader_pin_memory: bool = field(
        default_factory=torch.cuda.is_available,
        metadata={"help": "Pin data-loader memory (changed default: only where CUDA is available)."},
    )

    def __post_init__(self) -> None:
        # Both parents validate; neither calls the other (the base order keeps `output_dir` the first field).
        TrainingArguments.__post_init__(self)
        ClassifierAlignmentArguments.__post_init__(self)
        for name in ("temperature", "lr_decay_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        if not 0 < self.lr_decay_factor <= 1:
            raise ValueError(f"`lr_decay_factor` must be in (0, 1], got {self.lr_decay_factor}.")
        if self.ln_loss_weight is None:
            self.ln_loss_weight = 1.0 if self.projection else 0.0
        if not (isinstance(self.ln_loss_weight, (int, float)) and math.isfinite(self.ln_loss_weight)) or (
            self.ln_loss_weight < 0
        ):
            raise ValueError(f"`ln_loss_weight` must be a finite number ≥ 0, got {self.ln_loss_weight}.")
        if not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            raise ValueError(f"`learning_rate` must be a finite number ≥ 0, got {self.learning_rate}.")
        if self.projection_mode not in PROJECTION_MODES:
            raise ValueError(
                f"`projection_mode` must be one of {list(PROJECTION_MODES)}, got {self.projection_mode!r}."
            )
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"`weight_decay_mode` must be one of {list(WEIGHT_DECAY_MODES)}, got {self.weight_decay_mode!r}."
            )
        optim = getattr(self.optim, "value", self.optim)
        if self.weight_decay_mode == "l2" and optim not in _ADAM_OPTIMIZERS:
            raise ValueError(
                f"`weight_decay_mode='l2'` builds `torch.optim.Adam`; it needs an Adam-family `optim` "
                f"({list(_ADAM_OPTIMIZERS)}), got {optim!r}."
            )
        if self.lr_decay_epochs:
            if self.max_steps > 0:
                raise ValueError("`lr_decay_epochs` counts epochs: set `num_train_epochs` instead of `max_steps`.")
            if any(not 0 < epoch < self.num_train_epochs for epoch in self.lr_decay_epochs):
                raise ValueError(
                    f"`lr_decay_epochs` must lie strictly between 0 and `num_train_epochs` ({self.num_train_epochs}), "
                    f"got {self.lr_decay_epochs}."
                )
        for name in ("statistics_batch_size", "dataset_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be ≥ 1, got {getattr(self, name)}.")

    #: The settings a run records in its stages (`sequence.json`, the model card) and checks when it resumes.
    RECORDED_SETTINGS = (
        "learning_rate",
        "weight_decay",
        "weight_decay_mode",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "optim",
        "num_train_epochs",
        "max_steps",
        "dataset_repeats",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "lr_scheduler_type",
        "warmup_steps",
        "lr_decay_epochs",
        "lr_decay_factor",
        "max_grad_norm",
        "fp16",
        "bf16",
        "temperature",
        "ln_loss_weight",
        "projection",
        "projection_mode",
        "statistics_batch_size",
        "classifier_alignment",
        "alignment_epochs",
        "alignment_learning_rate",
        "alignment_momentum",
        "alignment_nesterov",
        "alignment_weight_decay",
        "alignment_samples_per_class",
        "alignment_batch_size",
        "alignment_covariance_ridge",
        "seed",
    )

    def recorded_settings(self) -> dict[str, Any]:
        """The values of [`RECORDED_SETTINGS`] (from `to_sanitized_dict`), plus the world size."""
        sanitized = self.to_sanitized_dict()
        settings = {name: sanitized[name] for name in self.RECORDED_SETTINGS}
        if self.lr_decay_epochs:  # the step schedule replaces the scheduler type and warm-up
            settings["lr_scheduler_type"], settings["warmup_steps"] = "multistep", 0
        settings["world_size"] = self.world_size
        return settings

    def alignment_arguments(self) -> ClassifierAlignmentArguments:
        """The classifier-alignment settings as [`ClassifierAlignmentArguments`]."""
        return ClassifierAlignmentArguments(
            **{f.name: getattr(self, f.name) for f in fields(ClassifierAlignmentArguments)}
        )
