# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Benchmark data for the recipes: a Hub dataset, an `imagefolder` tree or DomainNet's split lists, turned into
train/test `datasets.Dataset`s with an `Image` and a `ClassLabel` column."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset

from ..continual.data import find_columns, keep_classes, most_frequent_classes, per_class_subset
from .arguments import DATA_LAYOUTS, Benchmark, DataArguments, _layouts_help


@dataclass
class RecipeData:
    """Train and test data of a run and the names of their columns."""

    train: Dataset
    test: Dataset
    image_column: str
    label_column: str


def load_recipe_data(
    args: DataArguments,
    seed: int,
    benchmark: Benchmark | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> RecipeData:
    """Load, split, keep the most frequent classes and subsample, as ``args`` says (``seed`` drives the subsampling,
    ``args.split_seed`` the held-out test split). ``benchmark`` brings the authors' split lists and DomainNet's
    class count for the official lists; the columns default to the features (`find_columns`)."""
    lists = benchmark.authors_lists if benchmark is not None else None
    layout = resolve_layout(args.dataset, args.data_layout, lists)
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
    elif layout == "authors":
        splits = read_authors_split(Path(args.dataset), lists)
    else:
        splits = read_domainnet(Path(args.dataset))
    if args.train_split not in splits:
        raise ValueError(
            f"Split `{args.train_split}` not found in `{args.dataset}` (splits: {list(splits)}); pass `--train_split`."
        )
    train = splits[args.train_split]
    image_column, label_column = find_columns(train, image_column, label_column, args.dataset)
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
    num_classes = args.num_classes
    if num_classes is None and layout == "domainnet" and benchmark is not None:
        num_classes = benchmark.official_num_classes
    if num_classes is not None:
        classes = most_frequent_classes(train[label_column], num_classes)
        train = keep_classes(train, label_column, classes)
        test = keep_classes(test, label_column, classes)
    if args.max_train_samples_per_class is not None:
        train = train.select(per_class_subset(train[label_column], args.max_train_samples_per_class, seed))
    if args.max_test_samples_per_class is not None:
        test = test.select(per_class_subset(test[label_column], args.max_test_samples_per_class, seed))
    return RecipeData(train=train, test=test, image_column=image_column, label_column=label_column)


def resolve_layout(dataset: str, layout: str, authors_lists: str | None = None) -> str:
    """The concrete layout of ``dataset`` (``auto``: the authors' lists for a benchmark that has them, else a
    DomainNet root with official lists, an imagefolder tree, or a Hub id)."""
    if layout not in DATA_LAYOUTS:
        raise ValueError(f"Unknown data layout {layout!r}; choose one of {list(DATA_LAYOUTS)}.")
    path = Path(dataset).expanduser()
    if layout == "hub":
        return layout
    if layout == "authors" and authors_lists is None:
        raise ValueError(
            "`--data_layout authors` is for ImageNet-R and DomainNet, the benchmarks with the authors' split lists."
        )
    if path.is_dir():
        has_lists = any(path.glob("*_train.txt"))
        if layout == "auto":
            return "authors" if authors_lists else ("domainnet" if has_lists else "imagefolder")
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


def authors_split_lines(name: str) -> list[str]:
    """The lines of a shipped split list (``imagenet_r_train``, ``sdomain_val``, …; see ``authors_splits/``)."""
    data = resources.files(__package__).joinpath("authors_splits", f"{name}.txt.gz").read_bytes()
    return [line for line in gzip.decompress(data).decode("utf-8").splitlines() if line.strip()]


def read_authors_split(root: Path, lists: str) -> DatasetDict:
    """The images the paper trained and tested on, from the authors' lists (``lists``: ``imagenet_r`` or
    ``sdomain``) under a dataset ``root`` (ImageNet-R: ``<wnid>/<file>``, the class is the folder, classes in sorted
    order; DomainNet: ``<domain>/<class>/<file> <label>``, the class of each label from its paths).

    Returns:
        ``{"train", "test"}`` with an ``image`` (file path) and a ``label`` `ClassLabel` column (the paper's ``val``
        list is its test set).
    """
    splits = {}
    names: dict[int, str] = {}
    for split, suffix in (("train", "train"), ("test", "val")):
        rows = [line.split() for line in authors_split_lines(f"{lists}_{suffix}")]
        if lists == "imagenet_r":
            wnids = sorted({Path(row[0]).parts[0] for row in rows})
            names = dict(enumerate(wnids)) if not names else names
            index = {wnid: i for i, wnid in names.items()}
            labels = [index[Path(row[0]).parts[0]] for row in rows]
        else:
            labels = [int(row[1]) for row in rows]
            for row, label in zip(rows, labels):
                names.setdefault(label, Path(row[0]).parts[1])
        splits[split] = ([str(root / row[0]) for row in rows], labels)
    missing = [path for path in splits["train"][0][:3] + splits["test"][0][:3] if not os.path.exists(path)]
    if missing:
        raise ValueError(
            f"`{root}` does not hold the images of the authors' `{lists}` lists (missing e.g. `{missing[0]}`): point "
            "`--dataset` at the dataset root (ImageNet-R: the folder of `n01443537/`, …; DomainNet: the folder of "
            "`clipart/`, `real/`, …), or choose `--data_layout imagefolder`/`domainnet` for your own split."
        )
    features = Features({"image": Image(), "label": ClassLabel(names=[names[i] for i in range(len(names))])})
    return DatasetDict(
        {split: Dataset.from_dict({"image": p, "label": y}, features=features) for split, (p, y) in splits.items()}
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
                    raise ValueError(
                        f"{split_list}:{number}: label {label} is `{names[label]}` elsewhere, not `{name}`."
                    )
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
