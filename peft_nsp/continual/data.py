# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Image-classification datasets for continual learning: columns, class names, task splits, which classes and rows
a run keeps (the one owner of selecting classes and subsampling), collators.

One label vocabulary everywhere: a model's *class ids* (logit column ``i`` is class id ``i``, named
``model.config.id2label[i]``). A dataset's `ClassLabel` ids are its own; [`ClassIdLabels`] maps them to the
model's class ids by *name*, so datasets with different `ClassLabel` features (tasks arriving months apart) share
one model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Image


#: Turns a list of images (PIL images or arrays) into ``pixel_values`` ``(B, C, H, W)``.
ImageTransform = Callable[[list[Any]], torch.Tensor]

#: Label columns tried, in order, when a dataset has several `ClassLabel` columns (CIFAR-100: fine over coarse).
PREFERRED_LABEL_COLUMNS = ("label", "labels", "fine_label")


def find_columns(
    dataset: Dataset, image_column: str | None = None, label_column: str | None = None, name: str = "dataset"
) -> tuple[str, str]:
    """The image and label columns of ``dataset``, found by their features when not given.

    The image column is the one `datasets.Image` feature; the label column the one `ClassLabel` (among several:
    the first of [`PREFERRED_LABEL_COLUMNS`]). Both are validated.

    Raises:
        ValueError: not a `Dataset`, a column missing or of the wrong feature, or the choice is ambiguous.
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"`{name}` must be a `datasets.Dataset` (pick a split of a `DatasetDict`), got `{type(dataset).__name__}`."
        )
    image_column = image_column or _feature_column(dataset, Image, (), "image", name)
    label_column = label_column or _feature_column(dataset, ClassLabel, PREFERRED_LABEL_COLUMNS, "label", name)
    check_image_dataset(dataset, image_column, label_column, name)
    return image_column, label_column


def _feature_column(dataset: Dataset, kind: type, preferred: Sequence[str], what: str, name: str) -> str:
    columns = [column for column, feature in dataset.features.items() if isinstance(feature, kind)]
    for column in preferred:
        if column in columns:
            return column
    if len(columns) != 1:
        hint = "a `datasets.Image` column" if kind is Image else "a `ClassLabel` column"
        raise ValueError(
            f"`{name}` has {len(columns)} {kind.__name__} columns ({columns}): it needs exactly one, or name the "
            f"{what} column (`{what}_column=`). Columns: {dataset.column_names}; cast one to {hint}."
        )
    return columns[0]


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


def present_class_names(dataset: Dataset, label_column: str) -> list[str]:
    """Names of the `ClassLabel` classes that have samples in ``dataset``, in label-id order."""
    feature = dataset.features[label_column]
    return [feature.int2str(int(label)) for label in np.unique(np.asarray(dataset[label_column]))]


def split_classes(
    num_classes: int, num_tasks: int, seed: int, class_order: Sequence[int] | None = None
) -> list[list[int]]:
    """Cut a class order into ``num_tasks`` equal tasks of at least two classes.

    Args:
        num_classes: number of classes in the dataset.
        num_tasks: T; must divide the classes to train into tasks of two or more classes.
        seed: seeds the shuffle of ``range(num_classes)`` (NumPy ``default_rng``, as the authors' code) when no
            order is given.
        class_order: the class ids to train, in training order: a permutation of ``range(num_classes)``, or of a
            subset of it (the other classes are not trained).

    Returns:
        ``T`` lists of class ids.
    """
    if num_tasks < 1:
        raise ValueError(f"`num_tasks` must be ≥ 1, got {num_tasks}.")
    if class_order is None:
        order = np.random.default_rng(seed).permutation(num_classes).tolist()
    else:
        order = [int(c) for c in class_order]
        if len(set(order)) != len(order) or not set(order) <= set(range(num_classes)):
            raise ValueError(
                f"`class_order` must be a permutation of range({num_classes}) or of a subset of it, got {order}."
            )
    count = len(order)
    if count % num_tasks or count // num_tasks < 2:
        valid = [d for d in range(1, count // 2 + 1) if count % d == 0]
        subset = num_tasks * (count // num_tasks)
        keep = (
            (
                f", or train {subset} of them: a `class_order` of {subset} class ids (the recipes: `--num_classes "
                f"{subset}`, the most frequent)"
            )
            if count // num_tasks >= 2
            else ""
        )
        raise ValueError(
            f"{count} classes cannot be cut into {num_tasks} equal tasks of at least two classes (a one-class task "
            f"trains nothing: its cross-entropy over one logit is 0): choose `num_tasks` among {valid}{keep}."
        )
    size = count // num_tasks
    return [order[t * size : (t + 1) * size] for t in range(num_tasks)]


def select_classes(dataset: Dataset, label_column: str, classes: Sequence[int], name: str = "dataset") -> Dataset:
    """The rows of ``dataset`` whose label is in ``classes``; raise if there are none, warn for absent classes."""
    labels = np.asarray(dataset[label_column])
    indices = np.flatnonzero(np.isin(labels, np.asarray(classes)))
    if indices.size == 0:
        raise ValueError(f"`{name}` has no samples of classes {list(classes)}: this task would be empty.")
    absent = sorted({int(c) for c in classes} - set(np.unique(labels[indices]).tolist()))
    if absent:
        warnings.warn(
            f"`{name}` has no samples of classes {absent}; the task keeps them but cannot learn or test them.",
            stacklevel=2,
        )
    return dataset.select(indices)


def most_frequent_classes(labels: Sequence[int], count: int) -> list[int]:
    """The ``count`` classes with the most samples (ties: the smaller class id), in increasing id order."""
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    if count > len(ids):
        raise ValueError(f"`--num_classes {count}` but the training data has only {len(ids)} classes.")
    ranked = sorted(zip(ids.tolist(), counts.tolist()), key=lambda pair: (-pair[1], pair[0]))
    return sorted(class_id for class_id, _ in ranked[:count])


def keep_classes(dataset: Dataset, label_column: str, classes: Sequence[int]) -> Dataset:
    """Rows of ``classes`` only, labels renumbered 0 … len(classes)−1 (names kept)."""
    old = dataset.features[label_column]
    new_id = {c: i for i, c in enumerate(classes)}
    subset = select_classes(dataset, label_column, classes)
    features = subset.features.copy()
    features[label_column] = ClassLabel(names=[old.int2str(c) for c in classes])
    return subset.map(
        lambda batch: {label_column: [new_id[y] for y in batch[label_column]]},
        batched=True,
        features=features,
        desc="Renumbering classes",
    )


def per_class_subset(labels: Sequence[int], per_class: int, seed: int) -> list[int]:
    """Row indices keeping at most ``per_class`` random rows of every class (seeded), in dataset order."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return sorted(np.concatenate(keep).tolist())


class ClassIdLabels:
    """A `Dataset.with_transform` function adding ``labels``: the model's class id of each row's `ClassLabel`.

    Args:
        feature: the dataset's `ClassLabel` feature.
        class_ids: model class id of every class name the model knows.
        image_column / label_column: the dataset's columns.

    Raises:
        ValueError (when called): a row's class is unknown to the model.
    """

    def __init__(
        self, feature: ClassLabel, class_ids: Mapping[str, int], image_column: str, label_column: str
    ) -> None:
        self.names = list(feature.names)
        self.class_ids = dict(class_ids)
        self.image_column, self.label_column = image_column, label_column

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        names = [self.names[int(label)] for label in batch[self.label_column]]
        unknown = sorted(set(names) - set(self.class_ids))
        if unknown:
            raise ValueError(f"Classes {unknown} have no head in the model; train a task with them first.")
        return {self.image_column: batch[self.image_column], "labels": [self.class_ids[name] for name in names]}


def with_class_ids(
    dataset: Dataset, class_ids: Mapping[str, int], image_column: str, label_column: str, name: str = "dataset"
) -> Dataset:
    """``dataset`` yielding ``{image_column, "labels"}`` rows, ``labels`` the model's class ids (a lazy transform,
    nothing is copied).

    Raises:
        ValueError: some class with samples in ``dataset`` is unknown to the model (named).
    """
    unknown = sorted(set(present_class_names(dataset, label_column)) - set(class_ids))
    if unknown:
        raise ValueError(
            f"`{name}` holds classes the model has no head for: {unknown[:10]}{' …' if len(unknown) > 10 else ''}. "
            "Evaluate on classes of tasks already trained (or train a task with them first)."
        )
    feature = dataset.features[label_column]
    return dataset.with_transform(
        ClassIdLabels(feature, class_ids, image_column, label_column), columns=[image_column, label_column]
    )


class ImageCollator:
    """Collates rows ``{image_column, "labels"}`` into ``{"pixel_values", "labels"}``.

    Args:
        transform: images → ``(B, C, H, W)`` pixel values.
        image_column: the images' column.
    """

    def __init__(self, transform: ImageTransform, image_column: str = "image") -> None:
        self.transform = transform
        self.image_column = image_column

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixel_values = self.transform([row[self.image_column] for row in rows])
        return {"pixel_values": pixel_values, "labels": torch.tensor([int(row["labels"]) for row in rows])}


def processor_transform(image_processor: Any) -> ImageTransform:
    """An `ImageTransform` from a transformers image processor (e.g. `AutoImageProcessor`); RGB-converts PIL."""
    return _ProcessorTransform(image_processor)


class _ProcessorTransform:
    """Picklable (DataLoader workers) wrapper of an image processor."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: list[Any]) -> torch.Tensor:
        images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]
