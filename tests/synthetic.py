# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Small learnable image datasets (class = a colour blob at a class-specific place) for loop tests."""

from __future__ import annotations

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage


def blob_images(num_classes: int, per_class: int, size: int = 16, seed: int = 0) -> Dataset:
    """``num_classes × per_class`` RGB images; class ``c`` has a bright square at position/colour ``c``."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(num_classes):
        for _ in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            row, col = divmod(label, 4)
            pixels[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4, label % 3] = 255
            images.append(PILImage.fromarray(pixels))
            labels.append(label)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"class_{c}" for c in range(num_classes)])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def to_tensor(images: list) -> torch.Tensor:
    """PIL images → ``(B, 3, H, W)`` in [-1, 1]."""
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0
