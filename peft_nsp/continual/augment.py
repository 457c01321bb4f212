# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The authors' image pipelines, without torchvision: PIL until the tensor conversion, as the authors' code.

Training (``AuthorsTrainTransform``): AutoAugment (CIFAR10 or ImageNet policy, bilinear) on the raw PIL image, then
RandomResizedCrop to the model's size (scale (0.08, 1), ratio (3/4, 4/3), PIL's resize: bicubic for CIFAR and
bilinear otherwise), no flip, then normalisation. Evaluation and statistics (``EvalTransform``): a plain resize to
the model's size (CIFAR, bicubic), a resize to 256 × 256 and a centre crop (ImageNet-R, DomainNet), or CLIP's
shorter-side resize and centre crop. Every image is transformed on its own, so images of any size work.

``AutoAugment`` follows torchvision's (0.16, the authors') for PIL images: the same random draws from torch's
generator (sub-policy, two probabilities, two signs), the same magnitude bins (10 per operation) and each operation
done by PIL's own function with torchvision's arguments (affine maps with its inverse-matrix convention, black fill).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps


INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
#: AutoAugment's resampling of its geometric operations (torchvision's default is nearest; the authors pass bilinear).
AUTOAUGMENT_INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, **INTERPOLATIONS}
NUM_MAGNITUDE_BINS = 10
#: Sub-policies of the AutoAugment paper (Cubuk et al., 2019) as torchvision lists them: two
#: ``(operation, probability, magnitude bin or None)`` each.
AUTOAUGMENT_SUBPOLICIES: dict[str, tuple[tuple[tuple[str, float, int | None], ...], ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
}
AUTOAUGMENT_POLICIES = tuple(AUTOAUGMENT_SUBPOLICIES)
#: The largest magnitude of the operations whose bins rise linearly from 0 (translations: a fraction of the side).
_LINEAR_BIN_ENDS = {
    "ShearX": 0.3,
    "ShearY": 0.3,
    "Rotate": 30.0,
    "Brightness": 0.9,
    "Color": 0.9,
    "Contrast": 0.9,
    "Sharpness": 0.9,
}
_TRANSLATE_FRACTION = 150.0 / 331.0
_ENHANCERS = {
    "Brightness": ImageEnhance.Brightness,
    "Color": ImageEnhance.Color,
    "Contrast": ImageEnhance.Contrast,
    "Sharpness": ImageEnhance.Sharpness,
}
_NO_MAGNITUDE = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}
OPERATIONS = (*_LINEAR_BIN_ENDS, "TranslateX", "TranslateY", "Posterize", "Solarize", *_NO_MAGNITUDE)


def as_rgb_image(image: Any) -> Image.Image:
    """A PIL image or ``(H, W[, C])`` uint8 array → an RGB PIL image."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    return image.convert("RGB")


def to_rgb_tensor(image: Any) -> torch.Tensor:
    """A PIL image or ``(H, W[, C])`` uint8 array → float ``(3, H, W)`` in [0, 1] (ToTensor)."""
    array = np.asarray(as_rgb_image(image), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixels − mean) / std`` per channel; pixels ``(..., 3, H, W)``."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


def magnitude_bins(operation: str, width: int, height: int) -> tuple[list[float] | None, bool]:
    """torchvision's AutoAugment magnitudes of ``operation`` for a ``width`` × ``height`` image: the
    ``NUM_MAGNITUDE_BINS`` values (float32 ``linspace`` as torchvision's, as Python floats; ``None`` for an operation
    without magnitude) and whether a random sign applies."""
    bins = NUM_MAGNITUDE_BINS
    if operation in _LINEAR_BIN_ENDS or operation in ("TranslateX", "TranslateY"):
        side = {"TranslateX": width, "TranslateY": height}.get(operation)
        end = _LINEAR_BIN_ENDS[operation] if side is None else _TRANSLATE_FRACTION * side
        return torch.linspace(0.0, end, bins, dtype=torch.float32).tolist(), True
    if operation == "Posterize":  # bits: 8 down to 4, each kept for about two bins
        return [float(8 - round(4 * i / (bins - 1))) for i in range(bins)], False
    if operation == "Solarize":  # threshold: 255 (no change) down to 0 (inverts everything)
        return torch.linspace(255.0, 0.0, bins, dtype=torch.float32).tolist(), False
    if operation in _NO_MAGNITUDE:
        return None, False
    raise ValueError(f"`operation` must be one of {list(OPERATIONS)}, got {operation!r}.")


def shear_translate_coefficients(
    shear: tuple[float, float], translate: tuple[int, int], center: tuple[float, float]
) -> tuple[float, ...]:
    """PIL's ``AFFINE`` coefficients (output pixel → input pixel) of torchvision's ``F.affine`` with angle 0 and
    scale 1 on a PIL image: the forward map is T · C · SHy(sy) · SHx(sx) · C⁻¹ (translation ``translate``, centre
    ``center`` in pixels from the top-left corner, ``shear`` ``(sx, sy)`` in degrees, SHx = [[1, −tan sx], [0, 1]],
    SHy = [[1, 0], [−tan sy, 1]]); PIL wants its inverse C · (SHy · SHx)⁻¹ · C⁻¹ · T⁻¹."""
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    # (SHy · SHx)⁻¹ = [[1 + tan sx tan sy, tan sx], [tan sy, 1]], each entry computed with torchvision's
    # floating-point operations (cos sy · tan sx / cos sy, not tan sx), so the coefficients agree to the last bit.
    inverse = [
        1.0 + math.sin(sy) * math.tan(sx) / math.cos(sy),
        math.cos(sy) * math.tan(sx) / math.cos(sy),
        0.0,
        math.sin(sy) / math.cos(sy),
        1.0,
        0.0,
    ]
    (cx, cy), (tx, ty) = center, translate
    inverse[2] += inverse[0] * (-cx - tx) + inverse[1] * (-cy - ty) + cx
    inverse[5] += inverse[3] * (-cx - tx) + inverse[4] * (-cy - ty) + cy
    return tuple(inverse)


def apply_operation(
    image: Image.Image, operation: str, magnitude: float, interpolation: str = "nearest"
) -> Image.Image:
    """One AutoAugment ``operation`` with its signed ``magnitude`` on a PIL ``image``, as torchvision's
    ``_apply_op`` does for PIL inputs with ``fill=None`` (black outside the image)."""
    resample = AUTOAUGMENT_INTERPOLATIONS[interpolation]
    black = (0,) * len(image.getbands())
    if operation in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        if operation.startswith("Shear"):  # the shear angle whose tangent is the magnitude, about the corner (0, 0)
            angle = math.degrees(math.atan(magnitude))
            shear = (angle, 0.0) if operation == "ShearX" else (0.0, angle)
            coefficients = shear_translate_coefficients(shear, (0, 0), (0.0, 0.0))
        else:  # whole pixels (truncated towards 0), about the image centre
            shift = (int(magnitude), 0) if operation == "TranslateX" else (0, int(magnitude))
            coefficients = shear_translate_coefficients((0.0, 0.0), shift, (image.width * 0.5, image.height * 0.5))
        return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample, fillcolor=black)
    if operation == "Rotate":  # degrees, counter-clockwise about the centre, same size
        return image.rotate(magnitude, resample, expand=False, center=None, fillcolor=black)
    if operation in _ENHANCERS:
        return _ENHANCERS[operation](image).enhance(1.0 + magnitude)
    if operation == "Posterize":
        return ImageOps.posterize(image, int(magnitude))
    if operation == "Solarize":
        return ImageOps.solarize(image, magnitude)
    if operation in _NO_MAGNITUDE:
        return _NO_MAGNITUDE[operation](image)
    raise ValueError(f"`operation` must be one of {list(OPERATIONS)}, got {operation!r}.")


class AutoAugment:
    """torchvision's ``AutoAugment`` for PIL images, without torchvision.

    One call draws, from torch's generator in torchvision's order, a sub-policy (uniformly), two probabilities
    (uniform in [0, 1)) and two signs (0 or 1); operation ``i`` of the sub-policy applies when probability ``i`` ≤
    its probability, with its bin's magnitude, negated for a signed operation when sign ``i`` is 0. The same seed
    therefore draws what torchvision draws.

    Args:
        policy: ``"imagenet"`` or ``"cifar10"``.
        interpolation: of the geometric operations: ``"nearest"`` (torchvision's default), ``"bilinear"`` (the
            authors') or ``"bicubic"``.
    """

    def __init__(self, policy: str = "imagenet", interpolation: str = "nearest") -> None:
        if policy not in AUTOAUGMENT_SUBPOLICIES:
            raise ValueError(f"`policy` must be one of {list(AUTOAUGMENT_POLICIES)}, got {policy!r}.")
        if interpolation not in AUTOAUGMENT_INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {list(AUTOAUGMENT_INTERPOLATIONS)}, got {interpolation!r}."
            )
        self.policy, self.interpolation = policy, interpolation
        self.subpolicies = AUTOAUGMENT_SUBPOLICIES[policy]

    def draw(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, list]:
        """The sub-policy index and the ``(operation, signed magnitude)`` it applies to a ``width`` × ``height``
        image (0 to 2 of them), drawn as torchvision's ``get_params``."""
        index = int(torch.randint(len(self.subpolicies), (1,), generator=generator))
        probabilities = torch.rand(2, generator=generator)
        signs = torch.randint(2, (2,), generator=generator).tolist()
        applied = []
        for (operation, probability, level), drawn, sign in zip(self.subpolicies[index], probabilities, signs):
            if drawn <= probability:  # a float32 comparison, as torchvision's
                bins, signed = magnitude_bins(operation, width, height)
                magnitude = 0.0 if level is None else bins[level]
                applied.append((operation, -magnitude if signed and sign == 0 else magnitude))
        return index, applied

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """A PIL ``image`` → the augmented PIL image (same size and mode)."""
        for operation, magnitude in self.draw(image.width, image.height, generator)[1]:
            image = apply_operation(image, operation, magnitude, self.interpolation)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy!r}, interpolation={self.interpolation!r})"


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


class AuthorsTrainTransform:
    """The authors' training pipeline, on PIL images: AutoAugment on the raw image → RandomResizedCrop → ToTensor
    → normalise (no flip).

    Args:
        image_size: output side.
        mean / std: per-channel normalisation (the checkpoint's: 0.5 / 0.5 for the AugReg ViT).
        policy: AutoAugment policy, ``"cifar10"`` (CIFAR-100) or ``"imagenet"`` (ImageNet-R, DomainNet); its
            geometric operations resample bilinearly (the authors').
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
        self.auto_augment = AutoAugment(policy, interpolation="bilinear") if auto_augment else None

    def __call__(self, images: list[Any]) -> torch.Tensor:
        """``images`` (PIL or uint8 arrays, any sizes) → ``(N, 3, image_size, image_size)``; draws from torch's
        generator."""
        out = []
        for image in images:
            image = as_rgb_image(image)
            if self.auto_augment is not None:
                image = self.auto_augment(image)
            top, left, h, w = random_resized_crop_box(image.height, image.width, self.scale, self.ratio, None)
            crop = image.crop((left, top, left + w, top + h))
            crop = crop.resize((self.image_size, self.image_size), INTERPOLATIONS[self.interpolation])
            out.append(normalize(to_rgb_tensor(crop), self.mean, self.std))
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
        image = as_rgb_image(image)
        resample = INTERPOLATIONS[self.interpolation]
        if self.shorter_side:
            factor = self.image_size / min(image.size)
            image = image.resize(
                (
                    max(self.image_size, round(image.width * factor)),
                    max(self.image_size, round(image.height * factor)),
                ),
                resample,
            )
        else:
            side = self.resize_to or self.image_size
            image = image.resize((side, side), resample)
        left, top = (image.width - self.image_size) // 2, (image.height - self.image_size) // 2
        return image.crop((left, top, left + self.image_size, top + self.image_size))
