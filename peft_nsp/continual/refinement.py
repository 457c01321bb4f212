# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Head refinement after each task (CLIP-NSP²): train the image-side head on features sampled from the
Gaussians of all seen classes.

The tuner stores every class's pooled-feature mean and covariance (`VPTNSPModel.update_class_statistics`); each
refinement epoch draws ``samples_per_class`` features per class from ``N(μ_c, Σ_c + ridge·I)`` and trains, with
SGD and cross-entropy over all seen classes, what `VPTNSPModel.refinable_parameters` returns: CLIP's image
projection (the adapter's copy of `visual_projection`) and, with linear heads, every task's head. The text
embeddings and the logit scale stay fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class HeadRefinementArguments:
    """Hyperparameters of [`refine_head`] (defaults: the paper's CLIP-NSP² values).

    The `refine_` prefix keeps the names apart from `TrainingArguments` when both are parsed by one
    `HfArgumentParser`.

    Args:
        refine_epochs (`int`, defaults to `50`):
            Epochs over freshly sampled features.
        refine_learning_rate (`float`, defaults to `1e-3`):
            SGD learning rate (constant).
        refine_momentum (`float`, defaults to `0.9`):
            SGD momentum.
        refine_nesterov (`bool`, defaults to `True`):
            Nesterov momentum (the authors' timm SGD).
        refine_weight_decay (`float`, defaults to `1e-4`):
            SGD weight decay, on weight matrices only (biases are not decayed, as in the authors' code).
        refine_samples_per_class (`int`, defaults to `256`):
            Features sampled per class and epoch.
        refine_batch_size (`int`, defaults to `256`):
            Sampled features per optimizer step.
        refine_covariance_ridge (`float`, defaults to `1e-4`):
            Added to the diagonal of every class covariance before sampling (keeps it positive definite).
    """

    refine_epochs: int = field(default=50, metadata={"help": "Head refinement: epochs over sampled features."})
    refine_learning_rate: float = field(default=1e-3, metadata={"help": "Head refinement: SGD learning rate."})
    refine_momentum: float = field(default=0.9, metadata={"help": "Head refinement: SGD momentum."})
    refine_nesterov: bool = field(default=True, metadata={"help": "Head refinement: Nesterov momentum."})
    refine_weight_decay: float = field(default=1e-4, metadata={"help": "Head refinement: SGD weight decay."})
    refine_samples_per_class: int = field(
        default=256, metadata={"help": "Head refinement: features sampled per class and epoch."}
    )
    refine_batch_size: int = field(default=256, metadata={"help": "Head refinement: features per optimizer step."})
    refine_covariance_ridge: float = field(
        default=1e-4, metadata={"help": "Head refinement: added to the diagonal of every class covariance."}
    )

    def __post_init__(self) -> None:
        for name in ("refine_epochs", "refine_samples_per_class", "refine_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be ≥ 1, got {getattr(self, name)}.")
        for name in ("refine_learning_rate", "refine_momentum", "refine_weight_decay", "refine_covariance_ridge"):
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


def refine_head(model: nn.Module, args: HeadRefinementArguments | None = None, seed: int = 0) -> list[float]:
    """Refine the image-side head of a VPT-NSP² model on features sampled from all seen classes' Gaussians.

    Needs the class statistics of every seen task (`class_statistics=True` and `update_class_statistics` after
    each task). Every process with the same statistics and seed computes the same result.

    Args:
        model: a `PeftModel` with a `vpt_nsp` adapter (or its `VPTNSPModel`): `refinable_parameters()`,
            `class_feature_statistics()`, `logits_from_features()` and the training `temperature`.
        args: the hyperparameters (default: the paper's).
        seed: seeds the sampling and the shuffling.

    Returns:
        The mean training loss of every epoch.
    """
    args = args or HeadRefinementArguments()
    parameters = model.refinable_parameters()
    if not parameters:
        raise ValueError(
            "Nothing to refine: head refinement trains an image projection into the text space (`CLIPModel`) or "
            "linear heads, and this adapter has neither."
        )
    means, covariances = model.class_feature_statistics()
    device = parameters[0].device
    ridge = args.refine_covariance_ridge * torch.eye(covariances.shape[-1], dtype=torch.float64, device=device)
    scale_trils = torch.linalg.cholesky(covariances.to(device, torch.float64) + ridge).float()
    means = means.to(device, torch.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    groups = [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": args.refine_weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(
        [group for group in groups if group["params"]],
        lr=args.refine_learning_rate,
        momentum=args.refine_momentum,
        nesterov=args.refine_nesterov and args.refine_momentum > 0,
    )
    trainable = [p.requires_grad for p in parameters]
    losses = []
    try:
        for p in parameters:
            p.requires_grad_(True)
        for _ in range(args.refine_epochs):
            features, classes = sample_class_features(means, scale_trils, args.refine_samples_per_class, generator)
            order = torch.randperm(len(classes), generator=generator, device=device)
            total = 0.0
            for batch in order.split(args.refine_batch_size):
                # The heads' own outputs (the logits times the training temperature), as CLIP-NSP²'s refinement.
                logits = model.logits_from_features(features[batch]) * model.temperature
                loss = F.cross_entropy(logits, classes[batch])
                # Gradients of the refined weights only: the logit scale and the prompts keep theirs untouched.
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
