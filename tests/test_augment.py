# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""AutoAugment without torchvision: its policies, magnitude bins and random draws against tables transcribed from
torchvision 0.16 (``torchvision/transforms/autoaugment.py``, the authors' version), and every operation against an
independent PIL or numpy computation of what torchvision does for a PIL image."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from peft_nsp.continual.augment import (
    AUTOAUGMENT_SUBPOLICIES,
    AuthorsTrainTransform,
    AutoAugment,
    apply_operation,
    magnitude_bins,
    normalize,
)


#: torchvision's ``_get_policies``, transcribed: "operation probability bin" pairs, one sub-policy per line.
TORCHVISION_POLICIES = {
    "imagenet": """
        Posterize 0.4 8 | Rotate 0.6 9
        Solarize 0.6 5 | AutoContrast 0.6 -
        Equalize 0.8 - | Equalize 0.6 -
        Posterize 0.6 7 | Posterize 0.6 6
        Equalize 0.4 - | Solarize 0.2 4
        Equalize 0.4 - | Rotate 0.8 8
        Solarize 0.6 3 | Equalize 0.6 -
        Posterize 0.8 5 | Equalize 1.0 -
        Rotate 0.2 3 | Solarize 0.6 8
        Equalize 0.6 - | Posterize 0.4 6
        Rotate 0.8 8 | Color 0.4 0
        Rotate 0.4 9 | Equalize 0.6 -
        Equalize 0.0 - | Equalize 0.8 -
        Invert 0.6 - | Equalize 1.0 -
        Color 0.6 4 | Contrast 1.0 8
        Rotate 0.8 8 | Color 1.0 2
        Color 0.8 8 | Solarize 0.8 7
        Sharpness 0.4 7 | Invert 0.6 -
        ShearX 0.6 5 | Equalize 1.0 -
        Color 0.4 0 | Equalize 0.6 -
        Equalize 0.4 - | Solarize 0.2 4
        Solarize 0.6 5 | AutoContrast 0.6 -
        Invert 0.6 - | Equalize 1.0 -
        Color 0.6 4 | Contrast 1.0 8
        Equalize 0.8 - | Equalize 0.6 -
    """,
    "cifar10": """
        Invert 0.1 - | Contrast 0.2 6
        Rotate 0.7 2 | TranslateX 0.3 9
        Sharpness 0.8 1 | Sharpness 0.9 3
        ShearY 0.5 8 | TranslateY 0.7 9
        AutoContrast 0.5 - | Equalize 0.9 -
        ShearY 0.2 7 | Posterize 0.3 7
        Color 0.4 3 | Brightness 0.6 7
        Sharpness 0.3 9 | Brightness 0.7 9
        Equalize 0.6 - | Equalize 0.5 -
        Contrast 0.6 7 | Sharpness 0.6 5
        Color 0.7 7 | TranslateX 0.5 8
        Equalize 0.3 - | AutoContrast 0.4 -
        TranslateY 0.4 3 | Sharpness 0.2 6
        Brightness 0.9 6 | Color 0.2 8
        Solarize 0.5 2 | Invert 0.0 -
        Equalize 0.2 - | AutoContrast 0.6 -
        Equalize 0.2 - | Equalize 0.6 -
        Color 0.9 9 | Equalize 0.6 -
        AutoContrast 0.8 - | Solarize 0.2 8
        Brightness 0.1 3 | Color 0.7 0
        Solarize 0.4 5 | AutoContrast 0.9 -
        TranslateY 0.9 9 | TranslateY 0.7 9
        AutoContrast 0.9 - | Solarize 0.8 3
        Equalize 0.8 - | Invert 0.1 -
        TranslateY 0.7 9 | AutoContrast 0.9 -
    """,
}

#: torchvision's ``_augmentation_space(10, ...)`` for a 331 × 662 (width × height) image, transcribed with the
#: values of its float32 ``linspace``: operation → (the 10 magnitudes, signed). Translations are 150/331 of the side.
TENTHS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
THIRTIETHS = [0.0, 0.0333333, 0.0666667, 0.1, 0.1333333, 0.1666667, 0.2, 0.2333333, 0.2666667, 0.3]
TORCHVISION_BINS = {
    "ShearX": (THIRTIETHS, True),
    "ShearY": (THIRTIETHS, True),
    "TranslateX": (
        [0.0, 16.666667, 33.333333, 50.0, 66.666667, 83.333333, 100.0, 116.666667, 133.333333, 150.0],
        True,
    ),
    "TranslateY": (
        [0.0, 33.333333, 66.666667, 100.0, 133.333333, 166.666667, 200.0, 233.333333, 266.666667, 300.0],
        True,
    ),
    "Rotate": ([0.0, 3.333333, 6.666667, 10.0, 13.333333, 16.666667, 20.0, 23.333333, 26.666667, 30.0], True),
    "Brightness": (TENTHS, True),
    "Color": (TENTHS, True),
    "Contrast": (TENTHS, True),
    "Sharpness": (TENTHS, True),
    "Posterize": ([8, 8, 7, 7, 6, 6, 5, 5, 4, 4], False),
    "Solarize": (
        [255.0, 226.666667, 198.333333, 170.0, 141.666667, 113.333333, 85.0, 56.666667, 28.333333, 0.0],
        False,
    ),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
    "Invert": (None, False),
}
SIGNED_GEOMETRY = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLACK = (0, 0, 0)


def parsed(text: str) -> list[tuple[tuple[str, float, int | None], ...]]:
    def operation(words: str) -> tuple[str, float, int | None]:
        name, probability, level = words.split()
        return name, float(probability), None if level == "-" else int(level)

    return [tuple(operation(part) for part in line.split("|")) for line in text.strip().splitlines()]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A 37 × 23 (width × height, not square: width and height must not swap) colour image with edges and noise."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:23, 0:37]
    pixels = 30 + np.stack([columns * 5, rows * 8, (rows + columns) * 3], axis=-1)
    pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 30, 220).astype(np.uint8)  # AutoContrast acts
    pixels[8:15, 12:25] = (210, 40, 120)  # a block, so that geometric operations move edges
    return Image.fromarray(pixels)


def test_policies_are_torchvisions():
    assert set(AUTOAUGMENT_SUBPOLICIES) == set(TORCHVISION_POLICIES)
    for policy, text in TORCHVISION_POLICIES.items():
        assert [tuple(sub) for sub in AUTOAUGMENT_SUBPOLICIES[policy]] == parsed(text)
        assert len(parsed(text)) == 25
    with pytest.raises(ValueError, match="`policy` must be one of"):
        AutoAugment("svhn")


def test_magnitude_bins_are_torchvisions():
    for operation, (expected, signed) in TORCHVISION_BINS.items():
        bins, ours_signed = magnitude_bins(operation, 331, 662)
        assert ours_signed == signed, operation
        if expected is None:
            assert bins is None, operation
        else:
            np.testing.assert_allclose(bins, expected, rtol=1e-6, atol=1e-6, err_msg=operation)  # float32
    # CIFAR's 32 px: the translation bins in whole pixels (torchvision truncates them with `int`).
    assert [int(m) for m in magnitude_bins("TranslateX", 32, 16)[0]] == [0, 1, 3, 4, 6, 8, 9, 11, 12, 14]
    assert [int(m) for m in magnitude_bins("TranslateY", 32, 16)[0]] == [0, 0, 1, 2, 3, 4, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="`operation` must be one of"):
        magnitude_bins("Cutout", 8, 8)


def independent(image: Image.Image, operation: str, magnitude: float) -> np.ndarray:
    """What torchvision does to a PIL image, written with other PIL calls or numpy (bilinear, black fill)."""
    pixels = np.asarray(image).astype(np.int64)
    bilinear = Image.Resampling.BILINEAR
    if operation in ("ShearX", "ShearY"):  # output (x, y) reads input (x + m·y, y) or (x, y + m·x), corner origin
        shear = (1, magnitude, 0, 0, 1, 0) if operation == "ShearX" else (1, 0, 0, magnitude, 1, 0)
        return np.asarray(image.transform(image.size, Image.Transform.AFFINE, shear, bilinear, fillcolor=BLACK))
    if operation in ("TranslateX", "TranslateY"):  # content moves by int(m) whole pixels, black where it left
        shift, axis = int(magnitude), 1 if operation == "TranslateX" else 0
        moved = np.roll(pixels, shift, axis=axis)
        index = [slice(None)] * 3
        index[axis] = slice(0, shift) if shift >= 0 else slice(shift, None)
        moved[tuple(index)] = 0
        return moved
    if operation == "Rotate":
        return np.asarray(image.rotate(magnitude, resample=bilinear, fillcolor=BLACK))
    if operation == "Posterize":
        return pixels & (0xFF << (8 - int(magnitude)) & 0xFF)
    if operation == "Solarize":
        return np.where(pixels < magnitude, pixels, 255 - pixels)
    if operation == "Invert":
        return 255 - pixels
    enhancers = {
        "Brightness": ImageEnhance.Brightness,
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Sharpness": ImageEnhance.Sharpness,
    }
    if operation in enhancers:
        return np.asarray(enhancers[operation](image).enhance(1.0 + magnitude))
    return np.asarray({"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize}[operation](image))


@pytest.mark.parametrize("operation", list(TORCHVISION_BINS))
def test_every_operation_and_level_matches_an_independent_computation(image, operation):
    bins, signed = magnitude_bins(operation, image.width, image.height)
    levels = [0.0] if bins is None else bins
    changed = 0
    for magnitude in levels:
        for sign in (1, -1) if signed else (1,):
            ours = apply_operation(image, operation, sign * magnitude, "bilinear")
            assert ours.size == image.size and ours.mode == "RGB"
            np.testing.assert_array_equal(
                np.asarray(ours),
                independent(image, operation, sign * magnitude),
                err_msg=f"{operation} {sign * magnitude}",
            )
            changed += not np.array_equal(np.asarray(ours), np.asarray(image))
    assert changed > 0, operation  # the comparison is not vacuous


def test_known_kornia_differences_are_gone():
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1))).convert("RGB")
    solarized = np.asarray(apply_operation(ramp, "Solarize", magnitude_bins("Solarize", 256, 4)[0][8]))[0, :, 0]
    assert np.mean(solarized != np.arange(256)) == pytest.approx(227 / 256)  # level 8: threshold 28.3, 89 % inverted
    posterized = np.asarray(apply_operation(ramp, "Posterize", magnitude_bins("Posterize", 256, 4)[0][8]))
    assert len(np.unique(posterized)) == 16  # level 8: 4 bits
    colourful = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 9, 3), dtype=np.uint8))
    color_0 = apply_operation(colourful, "Color", magnitude_bins("Color", 9, 9)[0][0])
    np.testing.assert_array_equal(np.asarray(color_0), np.asarray(colourful))  # level 0: no change


def test_draws_follow_torchvisions_order_and_are_uniform_and_signed_both_ways():
    augment = AutoAugment("cifar10")
    generator, replay = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    chosen, signs, applied = Counter(), Counter(), Counter()
    draws = 5000
    for _ in range(draws):
        index, operations = augment.draw(32, 32, generator)
        # torchvision's get_params: randint(25), rand(2), randint(2, (2,)), in this order from the same generator.
        expected_index = int(torch.randint(25, (1,), generator=replay))
        probabilities, sign_bits = torch.rand(2, generator=replay), torch.randint(2, (2,), generator=replay)
        assert index == expected_index
        expected = []
        for slot, (name, probability, level) in enumerate(parsed(TORCHVISION_POLICIES["cifar10"])[index]):
            if probabilities[slot] <= probability:
                bins, signed = magnitude_bins(name, 32, 32)
                magnitude = 0.0 if level is None else bins[level]
                expected.append((name, -magnitude if signed and sign_bits[slot] == 0 else magnitude))
                applied[index, slot] += 1
        assert operations == expected
        chosen[index] += 1
        for name, magnitude in operations:
            if name in SIGNED_GEOMETRY and magnitude != 0:
                signs[name, magnitude > 0] += 1
    # Sub-policies uniform: χ² with 24 degrees of freedom below its 0.1 % critical value (51.2).
    expected_count = draws / 25
    assert sum((chosen[i] - expected_count) ** 2 / expected_count for i in range(25)) < 51.2
    for name in SIGNED_GEOMETRY[1:]:  # ShearX is not in the CIFAR10 policy
        total = signs[name, True] + signs[name, False]
        assert total > 100 and abs(signs[name, True] - total / 2) <= 2 * np.sqrt(total), (name, total)  # 4σ
    # Each operation applies with its probability (within 5 standard deviations; 0.0 never).
    for index, subpolicy in enumerate(parsed(TORCHVISION_POLICIES["cifar10"])):
        for slot, (_, probability, _) in enumerate(subpolicy):
            n = chosen[index]
            assert abs(applied[index, slot] - n * probability) <= 5 * np.sqrt(n * probability * (1 - probability))


def test_imagenet_shear_x_and_rotate_take_both_signs():
    augment, generator = AutoAugment("imagenet"), torch.Generator().manual_seed(3)
    signs = Counter()
    for _ in range(6000):
        for name, magnitude in augment.draw(64, 64, generator)[1]:
            if name in ("ShearX", "Rotate"):
                signs[name, magnitude > 0] += 1
    for name in ("ShearX", "Rotate"):
        total = signs[name, True] + signs[name, False]
        assert total > 100 and abs(signs[name, True] - total / 2) <= 2 * np.sqrt(total), (name, total)


def test_a_call_applies_the_drawn_operations_in_order(image):
    augment = AutoAugment("imagenet", interpolation="bilinear")
    for seed in range(40):
        _, operations = augment.draw(image.width, image.height, torch.Generator().manual_seed(seed))
        expected = image
        for name, magnitude in operations:
            expected = Image.fromarray(independent(expected, name, magnitude).astype(np.uint8))
        ours = augment(image, torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected), err_msg=str(operations))
    torch.manual_seed(5)  # without a generator: torch's global one
    first = np.asarray(augment(image))
    torch.manual_seed(5)
    np.testing.assert_array_equal(first, np.asarray(augment(image)))
    with pytest.raises(ValueError, match="`interpolation` must be one of"):
        AutoAugment("imagenet", interpolation="area")


def test_train_transform_crops_and_resizes_with_pil():
    pixels = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    transform = AuthorsTrainTransform(
        6, [0.5] * 3, [0.25] * 3, interpolation="bicubic", auto_augment=False, scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    resized = Image.fromarray(pixels).resize((6, 6), Image.Resampling.BICUBIC)
    expected = normalize(
        torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255, [0.5] * 3, [0.25] * 3
    )
    torch.testing.assert_close(transform([pixels])[0], expected, rtol=0, atol=1e-6)


def test_probabilities_are_compared_in_float32_as_torchvision(monkeypatch):
    # torch.rand can return float32(0.6) = 0.6000000238…, which is ≤ 0.6 in float32 (torchvision applies the
    # operation) but not in float64.
    augment = AutoAugment("cifar10")
    seed = next(
        seed
        for seed in range(1000)
        if int(torch.randint(25, (1,), generator=torch.Generator().manual_seed(seed))) == 9
    )
    monkeypatch.setattr(torch, "rand", lambda *size, generator=None: torch.full(size, 0.6))
    index, operations = augment.draw(32, 32, torch.Generator().manual_seed(seed))
    assert index == 9 and [name for name, _ in operations] == ["Contrast", "Sharpness"]  # both 0.6
