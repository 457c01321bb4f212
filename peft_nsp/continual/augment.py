# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The paper's training augmentation (RandomResizedCrop + AutoAugment) on batched tensors, with kornia.

torchvision is not required: images are decoded with PIL, resized to a common square size so they batch, and
augmented as one tensor by kornia (the same ops run on a GPU if the batch is moved there first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from kornia import augmentation as K
from kornia.augmentation.auto import AutoAugment
from PIL import Image


def to_rgb_batch(images: list[Any], size: int) -> torch.Tensor:
    """PIL images or ``(H, W[, C])`` uint8 arrays → float ``(B, 3, size, size)`` in [0, 1] (bilinear resize)."""
    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixels − mean) / std`` per channel; pixels ``(B, 3, H, W)``."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


class EvalTransform:
    """Resize to ``image_size`` × ``image_size`` and normalise: what ViT image processors do, for any image list.

    Args:
        image_size: output side.
        mean / std: per-channel normalisation (the model's image processor's `image_mean` / `image_std`).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def __call__(self, images: list[Any]) -> torch.Tensor:
        return normalize(to_rgb_batch(images, self.image_size), self.mean, self.std)


class PaperTrainTransform:
    """RandomResizedCrop(``image_size``) + horizontal flip + AutoAugment (ImageNet policy), then normalise.

    Images are first resized to ``resize_to`` (default ``image_size · 256/224``) so a list of differently sized
    images becomes one batch; the crop then samples scale (0.08, 1) and ratio (3/4, 4/3) of that square.

    Args:
        image_size: output side.
        mean / std: per-channel normalisation.
        resize_to: side of the square the crops are taken from.
        auto_augment: apply AutoAugment (``False``: crop and flip only).
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize_to: int | None = None,
        auto_augment: bool = True,
    ) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_to = resize_to or round(image_size * 256 / 224)
        if self.resize_to < image_size:
            raise ValueError(f"`resize_to` ({self.resize_to}) must be ≥ `image_size` ({image_size}).")
        ops: list[torch.nn.Module] = [K.RandomResizedCrop((image_size, image_size)), K.RandomHorizontalFlip()]
        if auto_augment:
            ops.append(AutoAugment("imagenet"))
        self.augment = K.AugmentationSequential(*ops)

    def __call__(self, images: list[Any]) -> torch.Tensor:
        with torch.no_grad():
            pixels = self.augment(to_rgb_batch(images, self.resize_to)).clamp_(0.0, 1.0)
        return normalize(pixels, self.mean, self.std)
