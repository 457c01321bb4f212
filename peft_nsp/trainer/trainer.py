# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""[`NullSpaceTrainer`]: trains one task of a VPT-NSP² sequence with `transformers.Trainer`."""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from torch.nn import functional as F
from transformers import Trainer

from ..tuner.model import VPTNSPModel
from .config import NSPTrainingArguments


class NullSpaceTrainer(Trainer):
    """A `Trainer` for the newest task of a [`VPTNSPModel`].

    Loss: ``CE(logits[:, task] / T, labels) + λ · LN-loss``, where ``labels`` are *task-local* indices (0 … n−1
    over the newest head; [`TaskCollator`] makes them from global class ids). The null-space projection is
    attached to the optimizer in `create_optimizer` (torch step hooks), so it runs once per real optimizer step
    whatever the gradient accumulation, never on a step the fp16 scaler skips, and with any optimizer chosen
    through `optim=` or passed in `optimizers=`. Checkpoints are PEFT adapters holding the projector state too.

    Args:
        model ([`peft.PeftModel`]): a model with a `vpt_nsp` adapter and at least one task head.
        args ([`NSPTrainingArguments`]): training arguments.
        **kwargs: passed to `transformers.Trainer`.
    """

    _tag_names = ["peft-nsp", "vpt-nsp", "continual-learning"]
    _name = "VPT-NSP²"
    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: PeftModel, args: NSPTrainingArguments | None = None, **kwargs: Any) -> None:
        if args is None:
            args = NSPTrainingArguments(output_dir="nsp_trainer_output")
        elif not isinstance(args, NSPTrainingArguments):
            raise ValueError(
                f"`args` must be `NSPTrainingArguments`, got `{type(args).__name__}`: build them with "
                "`NSPTrainingArguments(**your_args.to_dict())`."
            )
        if not isinstance(model, PeftModel) or not isinstance(model.base_model, VPTNSPModel):
            raise ValueError(
                "`model` must be a PeftModel with a `vpt_nsp` adapter: "
                "`get_peft_model(vit, peft_nsp.VPTNSPConfig(...))`."
            )
        if model.base_model.vpt_nsp_head[model.active_adapter].num_tasks == 0:
            raise ValueError("The model has no task head: call `model.add_task(classes)` before training a task.")
        super().__init__(model=model, args=args, **kwargs)
        self.projection = None
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    @property
    def nsp_model(self) -> VPTNSPModel:
        """The tuner (unwrapped from DDP/PeftModel)."""
        return self.accelerator.unwrap_model(self.model).base_model

    def ln_loss_weight(self) -> float:
        if self.args.ln_loss_weight is not None:
            return self.args.ln_loss_weight
        return self.nsp_model.peft_config[self.nsp_model.active_adapters[0]].ln_loss_weight

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.args.projection and self.projection is None:
            self.projection = self.nsp_model.attach_null_space_projection(optimizer, mode=self.args.projection_mode)
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The paper's step schedule when `lr_decay_epochs` is set, else the `Trainer`'s."""
        if self.lr_scheduler is None and self.args.lr_decay_epochs:
            steps_per_epoch = num_training_steps / self.args.num_train_epochs
            milestones = sorted({round(epoch * steps_per_epoch) for epoch in self.args.lr_decay_epochs})
            self.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer or self.optimizer, milestones=milestones, gamma=self.args.lr_decay_factor
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits[:, self.nsp_model.task_columns()]
        loss = F.cross_entropy(logits / self.args.temperature, labels)
        weight = self.ln_loss_weight()
        if weight > 0:
            loss = loss + weight * self.nsp_model.layernorm_consistency_loss()
        return (loss, outputs) if return_outputs else loss
