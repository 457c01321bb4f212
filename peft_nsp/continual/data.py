# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental task splits of a `datasets.Dataset`, and the collator feeding images to the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Image

#: Turns a list of images (PIL images or arrays) into ``pixel_values`` ``(B, C, H, W)``.
ImageTransform = Callable[[list[Any]], torch.Tensor]


def check_image_dataset(dataset: Dataset, image_column: str, label_column: str, name: str = "dataset") -> ClassLabel:
    """Validate the columns a class-incremental run needs; return the `ClassLabel` feature."""
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"`{name}` must be a `datasets.Dataset` (pick a split of a `DatasetDict`), got `{type(dataset).__name__}`."
        )
    columns = list(dataset.column_names)
    if label_column not in columns:
        raise ValueError(f"`{name}` has no label column `{label_column}` (columns: {columns}); pass `label_column=`.")
    if image_column not in columns:
        raise ValueError(f"`{name}` has no image column `{image_column}` (columns: {columns}); pass `image_column=`.")
    label_feature = dataset.features[label_column]
    if not isinstance(label_feature, ClassLabel):
        raise ValueError(
            f"`{name}[{label_column!r}]` must be a `ClassLabel` column, got {label_feature!r}: use "
            f"`dataset.cast_column({label_column!r}, ClassLabel(names=[...]))`."
        )
    if not isinstance(dataset.features[image_column], Image):
        raise ValueError(
            f"`{name}[{image_column!r}]` must be a `datasets.Image` column, got {dataset.features[image_column]!r}: "
            f"use `dataset.cast_column({image_column!r}, datasets.Image())`."
        )
    return label_feature


def split_classes(
    num_classes: int, num_tasks: int, seed: int, class_order: Sequence[int] | None = None
) -> list[list[int]]:
    """Cut a class order into ``num_tasks`` equal tasks.

    Args:
        num_classes: number of classes in the dataset.
        num_tasks: T; must divide ``num_classes``.
        seed: seeds the shuffle of ``range(num_classes)`` (NumPy ``default_rng``) when no order is given.
        class_order: a user-given permutation of ``range(num_classes)``.

    Returns:
        ``T`` lists of global class ids.
    """
    if num_tasks < 1:
        raise ValueError(f"`num_tasks` must be ≥ 1, got {num_tasks}.")
    if num_classes % num_tasks:
        raise ValueError(
            f"{num_classes} classes cannot be cut into {num_tasks} equal tasks: choose `num_tasks` among the "
            f"divisors of {num_classes} ({[d for d in range(1, num_classes + 1) if num_classes % d == 0]}), or give "
            "a `class_order` of a class subset whose size it divides."
        )
    if class_order is None:
        order = np.random.default_rng(seed).permutation(num_classes).tolist()
    else:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(num_classes)):
            raise ValueError(f"`class_order` must be a permutation of range({num_classes}), got {order}.")
    size = num_classes // num_tasks
    return [order[t * size : (t + 1) * size] for t in range(num_tasks)]


def select_classes(dataset: Dataset, label_column: str, classes: Sequence[int], name: str = "dataset") -> Dataset:
    """The rows of ``dataset`` whose label is in ``classes``; raise if there are none."""
    labels = np.asarray(dataset[label_column])
    indices = np.flatnonzero(np.isin(labels, np.asarray(classes)))
    if indices.size == 0:
        raise ValueError(f"`{name}` has no samples of classes {list(classes)}: this task would be empty.")
    return dataset.select(indices)


class TaskCollator:
    """Collates rows into ``{"pixel_values", "labels"}``.

    Args:
        transform: images → ``(B, C, H, W)`` pixel values.
        image_column / label_column: the dataset's columns.
        task_classes: the newest task's global class ids: labels become task-local indices (what
            [`NullSpaceTrainer`] trains on). ``None`` keeps global class ids (evaluation).
    """

    def __init__(
        self,
        transform: ImageTransform,
        image_column: str = "image",
        label_column: str = "label",
        task_classes: Sequence[int] | None = None,
    ) -> None:
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.local_index = None if task_classes is None else {int(c): i for i, c in enumerate(task_classes)}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = [int(row[self.label_column]) for row in rows]
        if self.local_index is not None:
            unknown = sorted(set(labels) - set(self.local_index))
            if unknown:
                raise ValueError(f"Labels {unknown} are not classes of the task being trained.")
            labels = [self.local_index[label] for label in labels]
        pixel_values = self.transform([row[self.image_column] for row in rows])
        return {"pixel_values": pixel_values, "labels": torch.tensor(labels, dtype=torch.long)}


def processor_transform(image_processor: Any) -> ImageTransform:
    """An `ImageTransform` from a transformers image processor (e.g. `AutoImageProcessor`); RGB-converts PIL."""

    def transform(images: list[Any]) -> torch.Tensor:
        images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
        return image_processor(images=images, return_tensors="pt")["pixel_values"]

    return transform
