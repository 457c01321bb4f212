# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The authors' image pipelines, without torchvision: PIL for resizing, kornia's AutoAugment on tensors.

Training (``AuthorsTrainTransform``): AutoAugment (CIFAR10 or ImageNet policy) on the raw image, then
RandomResizedCrop to the model's size (scale (0.08, 1), ratio (3/4, 4/3), antialiased, bicubic for CIFAR and
bilinear otherwise), no flip, then normalisation. Evaluation and statistics (``EvalTransform``): a plain resize to
the model's size (CIFAR, bicubic), a resize to 256 × 256 and a centre crop (ImageNet-R, DomainNet), or CLIP's
shorter-side resize and centre crop. Every image is transformed on its own, so images of any size work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from kornia.augmentation.auto import AutoAugment
from PIL import Image
from torch.nn import functional as F

INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10")


def to_rgb_tensor(image: Any) -> torch.Tensor:
    """A PIL image or ``(H, W[, C])`` uint8 array → float ``(3, H, W)`` in [0, 1] (ToTensor)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixels − mean) / std`` per channel; pixels ``(..., 3, H, W)``."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop covering a fraction in ``scale`` of the image with aspect ratio in
    ``ratio`` (log-uniform); after 10 failed draws, the centre crop of the ratio closest to the image's (the rule
    of torchvision's ``RandomResizedCrop``)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize(pixels: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """``(3, H, W)`` → ``(3, *size)``, antialiased (as PIL and torchvision resize), clamped to [0, 1]."""
    resized = F.interpolate(pixels[None], size=size, mode=interpolation, align_corners=False, antialias=True)
    return resized[0].clamp_(0.0, 1.0)


class AuthorsTrainTransform:
    """The authors' training pipeline: AutoAugment on the raw image → RandomResizedCrop → normalise (no flip).

    Args:
        image_size: output side.
        mean / std: per-channel normalisation (the checkpoint's: 0.5 / 0.5 for the AugReg ViT).
        policy: AutoAugment policy, ``"cifar10"`` (CIFAR-100) or ``"imagenet"`` (ImageNet-R, DomainNet).
        interpolation: of the crop's resize: ``"bicubic"`` (CIFAR-100) or ``"bilinear"``.
        auto_augment: ``False``: crop only.
        scale / ratio: of the crop.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        policy: str = "imagenet",
        interpolation: str = "bilinear",
        auto_augment: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(f"`policy` must be one of {list(AUTOAUGMENT_POLICIES)}, got {policy!r}.")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {list(INTERPOLATIONS)}, got {interpolation!r}.")
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.interpolation, self.scale, self.ratio = interpolation, scale, ratio
        self.auto_augment = AutoAugment(policy) if auto_augment else None

    @torch.no_grad()
    def __call__(self, images: list[Any]) -> torch.Tensor:
        out = []
        for image in images:
            pixels = to_rgb_tensor(image)
            if self.auto_augment is not None:
                pixels = self.auto_augment(pixels[None])[0].clamp_(0.0, 1.0)
            top, left, h, w = random_resized_crop_box(pixels.shape[1], pixels.shape[2], self.scale, self.ratio, None)
            crop = pixels[:, top : top + h, left : left + w]
            out.append(normalize(resize(crop, (self.image_size, self.image_size), self.interpolation), self.mean,
                                 self.std))
        return torch.stack(out)


class EvalTransform:
    """Resize (and centre-crop) every image to ``image_size`` and normalise, with PIL.

    Args:
        image_size: output side.
        mean / std: per-channel normalisation.
        resize_to: first resize to ``resize_to`` × ``resize_to`` (e.g. 256), then centre-crop ``image_size``;
            ``None``: resize straight to ``image_size`` × ``image_size``.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        shorter_side: resize the shorter side to ``image_size`` keeping the aspect ratio, then centre-crop (CLIP's
            preprocessing); excludes ``resize_to``.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize_to: int | None = None,
        interpolation: str = "bilinear",
        shorter_side: bool = False,
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {list(INTERPOLATIONS)}, got {interpolation!r}.")
        if resize_to is not None and (shorter_side or resize_to < image_size):
            raise ValueError(f"`resize_to` ({resize_to}) must be ≥ `image_size` and excludes `shorter_side`.")
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.resize_to, self.interpolation, self.shorter_side = resize_to, interpolation, shorter_side

    def __call__(self, images: list[Any]) -> torch.Tensor:
        return torch.stack([normalize(to_rgb_tensor(self._resized(image)), self.mean, self.std) for image in images])

    def _resized(self, image: Any) -> Image.Image:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        resample = INTERPOLATIONS[self.interpolation]
        if self.shorter_side:
            factor = self.image_size / min(image.size)
            image = image.resize((max(self.image_size, round(image.width * factor)),
                                  max(self.image_size, round(image.height * factor))), resample)
        else:
            side = self.resize_to or self.image_size
            image = image.resize((side, side), resample)
        left, top = (image.width - self.image_size) // 2, (image.height - self.image_size) // 2
        return image.crop((left, top, left + self.image_size, top + self.image_size))
