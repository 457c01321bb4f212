# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Benchmark data for the recipes: a Hub dataset, an `imagefolder` tree or DomainNet's split lists, turned into
train/test `datasets.Dataset`s with an `Image` and a `ClassLabel` column."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset

from ..continual.data import PREFERRED_LABEL_COLUMNS, find_columns, select_classes
from .arguments import DATA_LAYOUTS, DataArguments, _layouts_help

#: Label columns tried, in order, when a dataset has several `ClassLabel` columns (CIFAR-100: fine over coarse).
PREFERRED_LABEL_COLUMNS = ("label", "labels", "fine_label")


@dataclass
class RecipeData:
    """Train and test data of a run and the names of their columns."""

    train: Dataset
    test: Dataset
    image_column: str
    label_column: str


def load_recipe_data(args: DataArguments, seed: int) -> RecipeData:
    """Load, split, keep the most frequent classes and subsample, as ``args`` says (``seed`` drives the subsampling,
    ``args.split_seed`` the held-out test split)."""
    layout = resolve_layout(args.dataset, args.data_layout)
    if layout == "hub":
        try:
            splits = load_dataset(args.dataset)
        except Exception as error:  # network, auth or a missing repo: the message names the cause
            raise ValueError(
                f"Could not load the Hub dataset `{args.dataset}`: {error}. If you meant a local folder, it does "
                "not exist; offline, point `--dataset` at a local copy."
            ) from error
    elif layout == "imagefolder":
        splits = load_dataset("imagefolder", data_dir=args.dataset)
    else:
        splits = read_domainnet(Path(args.dataset))
    if args.train_split not in splits:
        raise ValueError(
            f"Split `{args.train_split}` not found in `{args.dataset}` (splits: {list(splits)}); pass `--train_split`."
        )
    train = splits[args.train_split]
    image_column = args.image_column or _feature_column(train, Image, (), "image", args.dataset)
    label_column = args.label_column or _feature_column(train, ClassLabel, PREFERRED_LABEL_COLUMNS, "label", args.dataset)
    for column in (image_column, label_column):
        if column not in train.column_names:
            raise ValueError(f"`{args.dataset}` has no column `{column}` (columns: {train.column_names}).")
    if args.test_split in splits:
        test = splits[args.test_split]
    elif args.test_split == "test":
        held_out = train.train_test_split(
            test_size=args.test_fraction, stratify_by_column=label_column, seed=args.split_seed
        )
        train, test = held_out["train"], held_out["test"]
    else:
        raise ValueError(
            f"Split `{args.test_split}` not found in `{args.dataset}` (splits: {list(splits)}); pass `--test_split`, "
            "or leave it as `test` to hold out `--test_fraction` of the training data."
        )
    if args.num_classes is not None:
        classes = most_frequent_classes(train[label_column], args.num_classes)
        train = keep_classes(train, label_column, classes)
        test = keep_classes(test, label_column, classes)
    if args.max_train_samples_per_class is not None:
        train = train.select(per_class_subset(train[label_column], args.max_train_samples_per_class, seed))
    if args.max_test_samples_per_class is not None:
        test = test.select(per_class_subset(test[label_column], args.max_test_samples_per_class, seed))
    return RecipeData(train=train, test=test, image_column=image_column, label_column=label_column)


def resolve_layout(dataset: str, layout: str) -> str:
    """The concrete layout of ``dataset`` (``auto``: a DomainNet root, an imagefolder tree, or a Hub id)."""
    if layout not in DATA_LAYOUTS:
        raise ValueError(f"Unknown data layout {layout!r}; choose one of {list(DATA_LAYOUTS)}.")
    path = Path(dataset).expanduser()
    if layout == "hub":
        return layout
    if path.is_dir():
        has_lists = any(path.glob("*_train.txt"))
        if layout == "auto":
            return "domainnet" if has_lists else "imagefolder"
        if layout == "domainnet" and not has_lists:
            raise ValueError(
                f"`{dataset}` has no DomainNet split lists (`<domain>_train.txt`, `<domain>_test.txt`) at its top "
                "level: point `--dataset` at the DomainNet root, or use `--data_layout imagefolder`."
            )
        return layout
    is_hub_id = dataset.count("/") == 1 and not dataset.startswith((".", "/", "~"))
    if layout == "auto" and is_hub_id:
        return "hub"
    raise ValueError(
        f"Data directory `{dataset}` not found. Give {_layouts_help()}, or a Hub dataset id `owner/name`."
    )


def read_domainnet(root: Path) -> DatasetDict:
    """DomainNet from its split lists: every ``<domain>_{train,test}.txt`` under ``root`` (all domains mixed).

    Each line is ``<domain>/<class>/<file> <label>``; class names come from the paths.
    """
    splits: dict[str, tuple[list[str], list[int]]] = {}
    names: dict[int, str] = {}
    for split in ("train", "test"):
        lists = sorted(root.glob(f"*_{split}.txt"))
        if not lists:
            raise ValueError(f"`{root}` has no `*_{split}.txt` split list: DomainNet needs both train and test lists.")
        paths, labels = [], []
        for split_list in lists:
            for number, line in enumerate(split_list.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or len(Path(parts[0]).parts) < 3:
                    raise ValueError(
                        f"{split_list}:{number}: expected `<domain>/<class>/<file> <label>`, got {line!r}."
                    )
                label = int(parts[1])
                name = Path(parts[0]).parts[1]
                if names.setdefault(label, name) != name:
                    raise ValueError(f"{split_list}:{number}: label {label} is `{names[label]}` elsewhere, not `{name}`.")
                paths.append(str(root / parts[0]))
                labels.append(label)
        splits[split] = (paths, labels)
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"DomainNet labels in `{root}` must be 0 … N−1, got {sorted(names)[:5]} …")
    missing = [p for p in splits["train"][0][:5] + splits["test"][0][:5] if not os.path.exists(p)]
    if missing:
        raise ValueError(f"Images listed in the DomainNet split lists are missing, e.g. `{missing[0]}`.")
    features = Features({"image": Image(), "label": ClassLabel(names=[names[i] for i in range(len(names))])})
    return DatasetDict(
        {split: Dataset.from_dict({"image": p, "label": y}, features=features) for split, (p, y) in splits.items()}
    )


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


def _feature_column(dataset: Dataset, kind: type, preferred: Sequence[str], what: str, name: str) -> str:
    columns = [column for column, feature in dataset.features.items() if isinstance(feature, kind)]
    for column in preferred:
        if column in columns:
            return column
    if len(columns) != 1:
        raise ValueError(
            f"`{name}` has {len(columns)} {kind.__name__} columns ({columns}); name the {what} column with "
            f"`--{what}_column`."
        )
    return columns[0]
