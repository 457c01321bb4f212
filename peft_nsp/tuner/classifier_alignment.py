# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Classifier alignment after each task (CLIP-NSP²): train the image-side head on features sampled from the
Gaussians of all seen classes.

The tuner stores every class's pooled-feature mean and covariance (`VPTNSPModel.update_class_statistics`); each
alignment epoch draws ``samples_per_class`` features per class from ``N(μ_c, Σ_c + ridge·I)`` and trains, with
SGD and cross-entropy over all seen classes, what `VPTNSPModel.alignment_parameters` returns: CLIP's image
projection (the adapter's copy of `visual_projection`) and, with linear heads, every task's head. The text
embeddings and the logit scale stay fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._torch_utils import eval_mode, module_device
from .batches import ForwardFn, LabelsFn, labels_of
from .class_statistics import collect_class_feature_sums, mean_and_covariance
from .null_space_update import raise_if_not_finite


@dataclass
class ClassifierAlignmentArguments:
    """Hyperparameters of [`align_classifier`] (defaults: the paper's CLIP-NSP² values).

    The `alignment_` prefix keeps the names apart from `TrainingArguments` when both are parsed by one
    `HfArgumentParser`.

    Args:
        alignment_epochs (`int`, defaults to `50`):
            Epochs over freshly sampled features.
        alignment_learning_rate (`float`, defaults to `1e-3`):
            SGD learning rate (constant).
        alignment_momentum (`float`, defaults to `0.9`):
            SGD momentum.
        alignment_nesterov (`bool`, defaults to `True`):
            Nesterov momentum (the authors' timm SGD).
        alignment_weight_decay (`float`, defaults to `1e-4`):
            SGD weight decay, on weight matrices only (biases are not decayed, as in the authors' code).
        alignment_samples_per_class (`int`, defaults to `256`):
            Features sampled per class and epoch.
        alignment_batch_size (`int`, defaults to `256`):
            Sampled features per optimizer step.
        alignment_covariance_ridge (`float`, defaults to `1e-4`):
            Added to the diagonal of every class covariance before sampling (keeps it positive definite).
    """

    alignment_epochs: int = field(default=50, metadata={"help": "Classifier alignment: epochs over sampled features."})
    alignment_learning_rate: float = field(default=1e-3, metadata={"help": "Classifier alignment: SGD learning rate."})
    alignment_momentum: float = field(default=0.9, metadata={"help": "Classifier alignment: SGD momentum."})
    alignment_nesterov: bool = field(default=True, metadata={"help": "Classifier alignment: Nesterov momentum."})
    alignment_weight_decay: float = field(default=1e-4, metadata={"help": "Classifier alignment: SGD weight decay."})
    alignment_samples_per_class: int = field(
        default=256, metadata={"help": "Classifier alignment: features sampled per class and epoch."}
    )
    alignment_batch_size: int = field(
        default=256, metadata={"help": "Classifier alignment: features per optimizer step."}
    )
    alignment_covariance_ridge: float = field(
        default=1e-4, metadata={"help": "Classifier alignment: added to the diagonal of every class covariance."}
    )

    def __post_init__(self) -> None:
        for name in ("alignment_epochs", "alignment_samples_per_class", "alignment_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be ≥ 1, got {getattr(self, name)}.")
        for name in (
            "alignment_learning_rate",
            "alignment_momentum",
            "alignment_weight_decay",
            "alignment_covariance_ridge",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number ≥ 0, got {value!r}.")


def sample_class_features(
    means: torch.Tensor, scale_trils: torch.Tensor, samples_per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw features from per-class Gaussians ``x = μ_c + L_c z``, ``z ~ N(0, I)``.

    Args:
        means: ``(C, F)`` class means.
        scale_trils: ``(C, F, F)`` lower Cholesky factors ``L_c`` of the class covariances.
        samples_per_class: n.
        generator: the random generator (on the tensors' device).

    Returns:
        ``(C·n, F)`` features, grouped by class, and their ``(C·n,)`` class indices.
    """
    num_classes, width = means.shape
    noise = torch.randn(num_classes, samples_per_class, width, generator=generator, device=means.device)
    features = means[:, None, :] + noise @ scale_trils.transpose(-1, -2)
    classes = torch.arange(num_classes, device=means.device).repeat_interleave(samples_per_class)
    return features.reshape(-1, width), classes


def align_classifier(model: nn.Module, args: ClassifierAlignmentArguments | None = None, seed: int = 0) -> list[float]:
    """Refine the image-side head of a VPT-NSP² model on features sampled from all seen classes' Gaussians.

    Needs the class statistics of every seen task (`class_statistics=True` and `update_class_statistics` after
    each task). Every process with the same statistics and seed computes the same result.

    Args:
        model: a `PeftModel` with a `vpt_nsp` adapter (or its `VPTNSPModel`): `alignment_parameters()`,
            `class_feature_statistics()`, `logits_from_features()` and the training `temperature`.
        args: the hyperparameters (default: the paper's).
        seed: seeds the sampling and the shuffling.

    Returns:
        The mean training loss of every epoch.
    """
    args = args or ClassifierAlignmentArguments()
    parameters = model.alignment_parameters()
    if not parameters:
        raise ValueError(
            "Nothing to align: classifier alignment trains an image projection into the text space (`CLIPModel`) or "
            "linear heads, and this adapter has neither."
        )
    means, covariances = model.class_feature_statistics()
    device = parameters[0].device
    ridge = args.alignment_covariance_ridge * torch.eye(covariances.shape[-1], dtype=torch.float64, device=device)
    scale_trils = torch.linalg.cholesky(covariances.to(device, torch.float64) + ridge).float()
    means = means.to(device, torch.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    groups = [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": args.alignment_weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(
        [group for group in groups if group["params"]],
        lr=args.alignment_learning_rate,
        momentum=args.alignment_momentum,
        nesterov=args.alignment_nesterov and args.alignment_momentum > 0,
    )
    trainable = [p.requires_grad for p in parameters]
    losses = []
    try:
        for p in parameters:
            p.requires_grad_(True)
        for _ in range(args.alignment_epochs):
            features, classes = sample_class_features(means, scale_trils, args.alignment_samples_per_class, generator)
            order = torch.randperm(len(classes), generator=generator, device=device)
            total = 0.0
            for batch in order.split(args.alignment_batch_size):
                # The heads' own outputs (the logits times the training temperature), as CLIP-NSP²'s alignment.
                logits = model.logits_from_features(features[batch]) * model.temperature
                loss = F.cross_entropy(logits, classes[batch])
                # Gradients of the aligned weights only: the logit scale and the prompts keep theirs untouched.
                for p, grad in zip(parameters, torch.autograd.grad(loss, parameters)):
                    p.grad = grad
                optimizer.step()
                total += loss.item() * len(batch)
            losses.append(total / len(classes))
    finally:
        for p, flag in zip(parameters, trainable):
            p.requires_grad_(flag)
            p.grad = None
    return losses


class ClassStatisticsMixin:
    """The classifier-alignment side of [`VPTNSPModel`]: the data pass that stores every class's feature mean and
    covariance, what alignment reads and what it trains. Uses the model's adapters, router and heads."""

    @torch.no_grad()
    def update_class_statistics(
        self,
        batches: Iterable[Any],
        task: int = -1,
        adapter_name: str | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        forward_fn: ForwardFn | None = None,
        labels_fn: LabelsFn | None = None,
    ) -> None:
        """Store the per-class mean and covariance of the pooled features of a task's training data.

        Run after training the task, on its training data with evaluation transforms (the model is put in eval
        mode and restored). The features are those the image-side head reads (before CLIP's projection).

        Args:
            batches: iterable of mappings with ``pixel_values`` and ``labels`` (class ids), or of
                ``(pixel_values, labels)`` tuples.
            task: the task whose classes the labels belong to (default: the newest).
            adapter_name: must be the active adapter (default).
            reduce_fn: sums a tensor over processes, so every rank stores the statistics of all data.
            forward_kwargs: extra model arguments of the default ``forward_fn`` (e.g.
                ``{"interpolate_pos_encoding": True}``).
            forward_fn: ``forward_fn(model, batch)`` runs the prompted model on one batch (see `update_null_space`).
            labels_fn: ``labels_fn(batch)`` gives a batch's ``(B,)`` class ids (default: a ``labels`` key or the
                second item).
        """
        adapter_name = self._statistics_adapter(adapter_name, "update_class_statistics")
        config = self.peft_config[adapter_name]
        if not config.class_statistics:
            raise ValueError("Class statistics are off for this adapter: create it with `class_statistics=True`.")
        if not config.task_classes:
            raise ValueError("The adapter has no task: call `add_task` first.")
        task = range(len(config.task_classes))[task]
        classes = config.task_classes[task]
        statistics = self.vpt_nsp_class_statistics[adapter_name]
        forward = self._batch_forward(forward_fn, forward_kwargs)

        def features_of(batch: Any) -> torch.Tensor:
            self._router.feature_sink = captured = []
            try:
                forward(batch)
            finally:
                self._router.feature_sink = None
            return captured[-1]

        with eval_mode(self.model):
            sums = collect_class_feature_sums(
                batches,
                features_of,
                labels_fn or labels_of,
                classes,
                statistics.feature_size,
                module_device(self.model),
                reduce_fn,
            )
        empty = [c for c, count in zip(classes, sums[0].tolist()) if count == 0]
        if empty:
            raise ValueError(f"`update_class_statistics` got no samples of classes {empty} of task {task}.")
        means, covariances = mean_and_covariance(*sums)
        raise_if_not_finite({"class means": means, "class covariances": covariances}, "`update_class_statistics`")
        statistics.store(task, sums[0], means, covariances)

    def class_feature_statistics(self, adapter_name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C_seen, F)`` float64 means and ``(C_seen, F, F)`` float32 covariances of every seen class, in
        logit-column order (see `update_class_statistics`)."""
        adapter_name = adapter_name or self._active_adapter_name()
        if adapter_name not in self.vpt_nsp_class_statistics:
            raise ValueError("Class statistics are off for this adapter: create it with `class_statistics=True`.")
        return self.vpt_nsp_class_statistics[adapter_name].collected()

    def alignment_parameters(self, adapter_name: str | None = None) -> list[nn.Parameter]:
        """What classifier alignment trains: the image projection (CLIP) and the linear heads of every task."""
        adapter_name = adapter_name or self._active_adapter_name()
        parameters = []
        if adapter_name in self.vpt_nsp_projection:
            parameters += list(self.vpt_nsp_projection[adapter_name].parameters())
        return parameters + self.vpt_nsp_head[adapter_name].alignment_parameters()
