# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark recipes end to end on tiny generated data, their command line, data loading and augmentation."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import LocalHub
from peft import PeftModel
from PIL import Image
from testing_utils import IMAGE_SIZE, blob_images, tiny_model
from transformers import ViTImageProcessor, ViTModel

from peft_nsp.continual.augment import AuthorsTrainTransform, EvalTransform, random_resized_crop_box
from peft_nsp.continual.data import keep_classes, most_frequent_classes, per_class_subset, split_classes
from peft_nsp.scripts.arguments import DataArguments, parse_recipe_arguments, resolved_configuration
from peft_nsp.scripts.data import authors_split_lines, load_recipe_data


ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random ViT saved with its image processor, as a user's local checkpoint."""
    path = tmp_path_factory.mktemp("model")
    tiny_model("vit", seed=3).save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def write_images(root: Path, split: str, per_class: int, seed: int, classes: int = CLASSES) -> list[tuple[str, int]]:
    """Blob images as ``root/<split>/class_<c>/<i>.png``; returns (relative path, label) pairs."""
    written = []
    for i, row in enumerate(blob_images(classes, per_class, seed=seed)):
        relative = Path(split) / f"class_{row['label']}" / f"{i}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        row["image"].save(root / relative)
        written.append((str(relative), row["label"]))
    return written


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    write_images(root, "train", 6, seed=0)
    write_images(root, "test", 3, seed=1)
    return root


@pytest.fixture(scope="module")
def domainnet(tmp_path_factory):
    """DomainNet's layout: `<domain>/<class>/<file>` plus `<domain>_{train,test}.txt` lists, two domains."""
    root = tmp_path_factory.mktemp("domainnet")
    for domain, seed in (("real", 0), ("sketch", 5)):
        for split, per_class in (("train", 4), ("test", 2)):
            rows = write_images(root / domain, split, per_class, seed + (split == "test"))
            lines = [f"{domain}/{Path(p).parent.name}/{split}_{Path(p).name} {y}" for p, y in rows]
            for (relative, _), line in zip(rows, lines):
                (root / line.split()[0]).parent.mkdir(parents=True, exist_ok=True)
                (root / domain / relative).rename(root / line.split()[0])
            (root / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def quick_args(output_dir: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(checkpoint),
        "--output_dir",
        str(output_dir),
        "--num_tasks",
        "2",
        "--num_train_epochs",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--statistics_batch_size",
        "8",
        "--learning_rate",
        "0.05",
        "--use_cpu",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--prompt_length",
        "2",
        "--logging_steps",
        "100",
        "--dataset_repeats",
        "1",
        *extra,
    ]


def run_script(script: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(ROOT / "recipes" / script), run_name="__main__")


@pytest.mark.parametrize(
    ("script", "data", "extra", "expected_benchmark"),
    [
        ("train_cifar100.py", "imagefolder", (), "cifar100-2"),
        ("train_imagenet_r.py", "imagefolder", ("--data_layout", "imagefolder"), "imagenet-r-2"),
        ("train_domainnet.py", "domainnet", ("--data_layout", "domainnet", "--num_classes", "4"), "domainnet-2"),
    ],
)
def test_recipe_runs_two_tasks_end_to_end(
    script, data, extra, expected_benchmark, request, tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    root = request.getfixturevalue(data)
    run_script(script, quick_args(tmp_path, tiny_checkpoint, "--dataset", str(root), *extra), monkeypatch)
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert summary["benchmark"] == expected_benchmark and summary["method"] == "VPT-NSP²"
    matrix = summary["accuracy_matrix"]  # strict JSON: a ragged lower triangle, no NaN
    assert [len(row) for row in matrix] == [1, 2] and 0 <= summary["metrics"]["final_accuracy"] <= 1
    assert "VPT-NSP² (this run)" in printed and "final accuracy" in printed
    for task in range(2):
        stage = tmp_path / "tasks" / f"task-{task}"
        sequence = json.loads((stage / "sequence.json").read_text())
        settings = sequence["settings"]
        assert sequence["run_info"]["benchmark"] == expected_benchmark and settings["temperature"] > 1
        assert settings["lr_scheduler_type"] == "multistep" and settings["lr_decay_epochs"] == "[0.8, 1.4]"
        assert settings["weight_decay_mode"] == "l2" and settings["max_grad_norm"] == 0.0
        assert (stage / "accuracy_matrix.png").stat().st_size > 0
        assert (stage / "preprocessor_config.json").is_file()  # the image processor travels with every stage
    model = PeftModel.from_pretrained(ViTModel.from_pretrained(tiny_checkpoint), tmp_path / "tasks" / "task-1")
    assert sorted(model.class_names()) == [f"class_{c}" for c in range(CLASSES)]


def test_projection_off_runs_vpt_seq_and_the_paper_rows_are_printed(
    tmp_path, tiny_checkpoint, imagefolder, monkeypatch, capsys
):
    argv = quick_args(tmp_path, tiny_checkpoint, "--dataset", str(imagefolder), "--projection", "false")
    argv[argv.index("--num_tasks") + 1] = "10"
    with pytest.raises(ValueError, match="4 classes cannot be cut into 10 equal tasks"):
        run_script("train_cifar100.py", argv, monkeypatch)
    argv[argv.index("--num_tasks") + 1] = "2"
    args = parse_recipe_arguments("cifar100", argv)
    assert args.method == "VPT-Seq" and not args.training.projection and args.training.ln_loss_weight == 0
    with pytest.raises(SystemExit):  # a plain bool now: `off` is not one
        parse_recipe_arguments("cifar100", ["--projection", "off"])
    for script in ("train_cifar100.py", "train_imagenet_r.py", "train_domainnet.py", "train_imagefolder.py"):
        usage = runpy.run_path(str(ROOT / "recipes" / script))["__doc__"]
        assert "--projection off" not in usage and "--projection false" in usage  # what the docstrings advertise works
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_recipe_arguments("domainnet", ["--dataset", "x"]).training.per_device_train_batch_size == 64


def test_argument_errors_are_clear(tmp_path, tiny_checkpoint, imagefolder, monkeypatch, capsys):
    with pytest.raises(ValueError, match="Data directory `.*missing` not found"):
        run_script(
            "train_domainnet.py",
            quick_args(tmp_path, tiny_checkpoint, "--dataset", str(tmp_path / "missing")),
            monkeypatch,
        )
    with pytest.raises(ValueError, match="needs `--dataset`"):
        parse_recipe_arguments("imagenet-r", [])
    with pytest.raises(SystemExit):
        parse_recipe_arguments("domainnet", ["--dataset", "x", "--data_layout", "tfrecords"])
    assert "--data_layout/--data-layout: invalid choice: 'tfrecords'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no DomainNet split lists"):
        load_recipe_data(DataArguments(dataset=str(imagefolder), data_layout="domainnet"), seed=0)
    with pytest.raises(ValueError, match="does not hold the images of the authors' `imagenet_r` lists"):
        run_script(
            "train_imagenet_r.py", quick_args(tmp_path, tiny_checkpoint, "--dataset", str(imagefolder)), monkeypatch
        )
    with pytest.raises(ValueError, match=r"Split `validation` not found .*\(splits: \['train', 'test'\]"):
        load_recipe_data(DataArguments(dataset=str(imagefolder), test_split="validation"), seed=0)
    with pytest.raises(ValueError, match="`--test_split` and `--train_split` are both `train`"):
        DataArguments(dataset=str(imagefolder), test_split="train")
    with pytest.raises(ValueError, match="`--test_fraction` must be in"):
        DataArguments(dataset=str(imagefolder), test_fraction=1.5)
    with pytest.raises(ValueError, match="only 4 classes"):
        load_recipe_data(DataArguments(dataset=str(imagefolder), num_classes=9), seed=0)
    with pytest.raises(ValueError, match="Unknown benchmark 'mnist'"):
        parse_recipe_arguments("mnist", [])
    without_processor = tmp_path / "bare"
    tiny_model("vit").save_pretrained(without_processor)
    with pytest.raises(ValueError, match="could not be loaded as a model with an image processor"):
        run_script(
            "train_cifar100.py", quick_args(tmp_path, without_processor, "--dataset", str(imagefolder)), monkeypatch
        )


@pytest.mark.parametrize("model", ["timm/vit_base_patch16_224.augreg_in21k", "google/vit-base-patch16-224-in21k"])
def test_offline_default_model_says_there_is_no_network(tmp_path, imagefolder, monkeypatch, model):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    argv = ["--dataset", str(imagefolder), "--output_dir", str(tmp_path / "run"), "--use_cpu", "--report_to", "none"]
    if model.startswith("google"):
        argv += ["--model_name_or_path", model]
    with pytest.raises(ValueError, match="the Hugging Face Hub cannot be reached.*--model_name_or_path /path/to/"):
        run_script("train_cifar100.py", argv, monkeypatch)


def test_missing_test_split_is_held_out_per_class(tmp_path):
    root = tmp_path / "flat"
    write_images(root, ".", 10, seed=0)
    data = load_recipe_data(DataArguments(dataset=str(root), test_fraction=0.2), seed=3)
    assert Counter(data.test[data.label_column]) == dict.fromkeys(range(CLASSES), 2)
    assert Counter(data.train[data.label_column]) == dict.fromkeys(range(CLASSES), 8)


def test_domainnet_lists_are_read_with_class_names_from_paths(domainnet):
    data = load_recipe_data(DataArguments(dataset=str(domainnet)), seed=0)
    assert data.train.features["label"].names == [f"class_{c}" for c in range(CLASSES)]
    assert len(data.train) == 2 * CLASSES * 4 and len(data.test) == 2 * CLASSES * 2
    first = (domainnet / "real_train.txt").read_text().splitlines()[0].split()
    assert np.array_equal(np.asarray(data.train[0]["image"]), np.asarray(Image.open(domainnet / first[0])))
    assert data.train[0]["label"] == int(first[1])
    bad = domainnet / "broken"
    bad.mkdir()
    (bad / "real_train.txt").write_text("real/a/1.png\n")
    (bad / "real_test.txt").write_text("")
    with pytest.raises(ValueError, match=r"real_train.txt:1: expected `<domain>/<class>/<file> <label>`"):
        load_recipe_data(DataArguments(dataset=str(bad)), seed=0)


def test_class_selection_helpers_against_counting():
    labels = [3, 1, 1, 2, 2, 2, 0, 3, 3, 5, 5, 5]  # counts: 2→3, 3→3, 5→3, 1→2, 0→1
    assert most_frequent_classes(labels, 3) == [2, 3, 5]
    assert most_frequent_classes(labels, 4) == [1, 2, 3, 5]
    subset = per_class_subset(labels, 2, seed=0)
    assert Counter(labels[i] for i in subset) == {0: 1, 1: 2, 2: 2, 3: 2, 5: 2} and subset == sorted(subset)
    data = blob_images(6, 2)
    kept = keep_classes(data, "label", [1, 4])
    assert kept["label"] == [0, 0, 1, 1] and kept.features["label"].names == ["class_1", "class_4"]


def test_eval_transforms_match_pil_resizes_and_crops():
    """Each evaluation pipeline against PIL resize/crop and a hand normalisation (ToTensor: /255)."""
    images = [row["image"] for row in blob_images(3, 1, size=20)] + [
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 18, 3), dtype=np.uint8))
    ]
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.3, 0.4])

    def expected(image: Image.Image) -> torch.Tensor:
        array = (np.asarray(image.convert("RGB"), dtype=np.float64) / 255 - mean) / std
        return torch.from_numpy(array).permute(2, 0, 1).float()

    cifar = EvalTransform(12, mean, std, interpolation="bicubic")(images)  # resize (12, 12), bicubic, no crop
    for got, image in zip(cifar, images):
        torch.testing.assert_close(got, expected(image.resize((12, 12), Image.Resampling.BICUBIC)))
    large = EvalTransform(12, mean, std, resize_to=16)(images)  # 16 × 16 bilinear, centre crop 12
    for got, image in zip(large, images):
        resized = image.resize((16, 16), Image.Resampling.BILINEAR)
        torch.testing.assert_close(got, expected(resized.crop((2, 2, 14, 14))))
    clip = EvalTransform(12, mean, std, interpolation="bicubic", shorter_side=True)(images[-1:])  # 30×18 → 20×12
    resized = images[-1].resize((12, 20), Image.Resampling.BICUBIC)
    torch.testing.assert_close(clip[0], expected(resized.crop((0, 4, 12, 16))))
    with pytest.raises(ValueError, match="must be ≥ `image_size`"):
        EvalTransform(32, mean, std, resize_to=16)


def test_random_resized_crop_boxes_follow_the_scale_and_ratio_ranges():
    generator = torch.Generator().manual_seed(0)
    for height, width in ((60, 40), (32, 32), (20, 90)):
        for _ in range(200):
            top, left, h, w = random_resized_crop_box(height, width, (0.08, 1.0), (3 / 4, 4 / 3), generator)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
            if (h, w) != (height, width) and 3 / 4 <= width / height <= 4 / 3:
                assert 0.08 * 0.8 <= h * w / (height * width) <= 1.0  # rounding of the side lengths
                assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # An impossible scale falls back to the centre crop of the ratio closest to the image's.
    assert random_resized_crop_box(20, 90, (2.0, 3.0), (3 / 4, 4 / 3), generator) == (0, 31, 20, 27)


def test_authors_train_transform_is_reproducible_and_has_no_flip():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((30, 20), (16, 40))]
    transform = AuthorsTrainTransform(12, [0.5] * 3, [0.5] * 3, policy="cifar10", interpolation="bicubic")
    torch.manual_seed(1)
    first = transform(images)
    torch.manual_seed(1)
    assert first.shape == (2, 3, 12, 12) and torch.equal(first, transform(images))
    assert first.min() >= -1 and first.max() <= 1
    assert not torch.equal(first, transform(images))  # a new draw
    grey = Image.fromarray(np.full((9, 9), 51, dtype=np.uint8))  # crops of a flat image stay flat
    flat = AuthorsTrainTransform(8, [0.0] * 3, [1.0] * 3, auto_augment=False)([grey])
    torch.testing.assert_close(flat, torch.full_like(flat, 0.2), atol=1e-6, rtol=0)
    # Without AutoAugment, a full-image crop keeps left and right: a left-bright image stays left-bright (no flip).
    half = np.zeros((8, 8, 3), dtype=np.uint8)
    half[:, :4] = 255
    crops = AuthorsTrainTransform(8, [0.0] * 3, [1.0] * 3, auto_augment=False, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for _ in range(20):
        out = crops([Image.fromarray(half)])[0, 0]
        assert out[:, :4].mean() > 0.9 and out[:, 4:].mean() < 0.1
    with pytest.raises(ValueError, match="`policy` must be one of"):
        AuthorsTrainTransform(8, [0.0] * 3, [1.0] * 3, policy="svhn2")


#: The authors' configuration of every benchmark and variant, from their scripts and code (zugexiaodui/VPTinNSforCL:
#: train_*.sh, train_eval.py, utils/mod_adam.py, utils/dataset_builder.py, utils/vit_builder.py).
AUTHORS_PROTOCOL = {
    ("cifar100", ()): dict(
        temperature=28.0,
        eta=(0.97, 0.97),
        train=("cifar10", "bicubic"),
        eval=(None, "bicubic"),
        splits="uoft-cs/cifar100",
    ),
    ("cifar100", ("--num_tasks", "20")): dict(
        temperature=25.0,
        eta=(0.95, 0.95),
        train=("cifar10", "bicubic"),
        eval=(None, "bicubic"),
        splits="uoft-cs/cifar100",
    ),
    ("imagenet-r", ()): dict(
        temperature=30.0,
        eta=(0.94, 0.94),
        train=("imagenet", "bilinear"),
        eval=(256, "bilinear"),
        splits="authors' lists",
    ),
    ("domainnet", ()): dict(
        temperature=30.0,
        eta=(0.95, 0.95),
        train=("imagenet", "bilinear"),
        eval=(256, "bilinear"),
        splits="authors' lists",
    ),
}
VIT_SHARED = dict(
    model="timm/vit_base_patch16_224.augreg_in21k",
    optimizer="Adam, L2 weight decay",
    weight_decay=5e-5,
    betas=(0.9, 0.999),
    learning_rate=0.01,
    batch_size=256,
    passes_over_data=100,
    lr_decays_after_pass=[40.0, 70.0],
    lr_decay_factor=0.1,
    max_grad_norm=0.0,
    threshold_mode="adaptive",
    prompt_length=4,
    prompt_layers=None,
    task_weighting="size",
    head_init="authors",
    ln_loss_weight=1.0,
    classifier_alignment=False,
    seed=2024,
)
CLIP_SHARED = dict(
    VIT_SHARED,
    model="openai/clip-vit-base-patch16",
    learning_rate=0.001,
    batch_size=220,
    passes_over_data=20,
    lr_decays_after_pass=[8.0, 14.0],
    temperature=1.0,
    eta=(0.98, 0.98),
    prompt_layers=[0, 1, 2, 3],
    head_init="text embeddings",
    classifier_alignment=True,
    eval_transform="clip",
)


@pytest.mark.parametrize("variant", ["vpt-nsp", "clip-nsp"])
@pytest.mark.parametrize(("benchmark_name", "argv"), list(AUTHORS_PROTOCOL))
def test_every_recipe_resolves_to_the_authors_configuration(benchmark_name, argv, variant):
    row = AUTHORS_PROTOCOL[(benchmark_name, argv)]
    expected = {
        **VIT_SHARED,
        "temperature": row["temperature"],
        "eta": row["eta"],
        "train_transform": (*row["train"], "no flip"),
        "eval_transform": row["eval"],
        "splits": row["splits"],
    }
    clip = ("--classifier", "text") if variant == "clip-nsp" else ()
    if clip:
        expected.update({**CLIP_SHARED, "train_transform": expected["train_transform"]})
    args = parse_recipe_arguments(benchmark_name, [*argv, *clip, "--dataset", "somewhere"])
    assert resolved_configuration(args) == expected


def test_authors_split_lists_are_read_with_their_labels(tmp_path):
    """The shipped lists: every line becomes a row; classes as the authors number them."""
    for lists, train_count, test_count in (("imagenet_r", 24000, 6000), ("sdomain", 47532, 20450)):
        root = tmp_path / lists
        train, test = authors_split_lines(f"{lists}_train"), authors_split_lines(f"{lists}_val")
        assert (len(train), len(test)) == (train_count, test_count)
        for line in train[:3] + test[:3]:
            (root / line.split()[0]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / line.split()[0], format="PNG")
        benchmark = parse_recipe_arguments("imagenet-r" if lists == "imagenet_r" else "domainnet", ["--dataset", "x"])
        data = load_recipe_data(DataArguments(dataset=str(root)), seed=0, benchmark=benchmark.benchmark)
        names = data.train.features["label"].names
        assert (len(data.train), len(data.test), len(names)) == (train_count, test_count, 200)
        if lists == "imagenet_r":  # the label is the folder's rank among the sorted class folders
            assert names == sorted({line.split("/")[0] for line in train})
            assert [names[y] for y in data.train["label"][:5]] == [line.split("/")[0] for line in train[:5]]
        else:  # the label column of the list; the class name is the path's folder
            assert data.train["label"][:5] == [int(line.split()[1]) for line in train[:5]]
            assert names[0] == "pickup_truck" and names[int(test[0].split()[1])] == test[0].split("/")[1]


def test_quickstart_trains_both_methods_and_reloads_identically(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """The README's run command on a slice of MNIST-5k with a tiny backbone (the real one: test_offline)."""
    argv = [
        "--output_dir",
        str(tmp_path),
        "--model_name_or_path",
        str(tiny_checkpoint),
        "--train_per_class",
        "4",
        "--test_per_class",
        "2",
        "--epochs",
        "1",
        "--batch_size",
        "8",
        "--use_cpu",
        "true",
        "--analytic_projection_size",
        "64",
    ]  # the analytic head: the default
    run_script("quickstart.py", argv, monkeypatch)
    printed = capsys.readouterr().out
    assert "same predictions on 64 test images: True" in printed
    assert 'pipeline("image-classification", model=' in printed and "true '" in printed and "predicted '" in printed
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    for method, folder in (("VPT-NSP² + analytic head", "nsp"), ("VPT-Seq + analytic head", "seq")):
        counts = np.array(summary["methods"][method]["accuracy_matrix"]["total"][-1])
        assert counts.tolist() == [4] * 5  # 2 digits × 2 test images per task, 5 tasks
        assert (tmp_path / folder / "tasks" / "task-4" / "adapter_model.safetensors").is_file()
        assert f"| {method} |" in printed
    free = summary["methods"]["RanPAC (frozen backbone, trains nothing)"]  # what a user would pick instead
    assert free["accuracy_matrix"]["total"][-1] == [4] * 5  # the same test images, task by task
    assert "RanPAC (frozen backbone, trains nothing)" in printed
    assert " points above " in printed or " points BELOW " in printed
    assert (tmp_path / "accuracy_curves.png").stat().st_size > 0
    assert summary["run"]["wall_seconds"] > 0 and summary["run"]["command"].startswith("python recipes/quickstart.py")
    assert summary["run"]["cpu_seconds"] > 0 and len(summary["run"]["load_average"]) == 2
    assert set(summary["run"]["versions"]) >= {"torch", "transformers", "peft"}
    nsp = json.loads((tmp_path / "nsp" / "tasks" / "task-4" / "sequence.json").read_text())
    seq = json.loads((tmp_path / "seq" / "tasks" / "task-4" / "sequence.json").read_text())
    assert nsp["settings"]["projection"] and not seq["settings"]["projection"]
    assert seq["settings"]["ln_loss_weight"] == 0 and nsp["tasks"] == seq["tasks"]


def test_push_to_hub_flag_pushes_every_task(tmp_path, tiny_checkpoint, imagefolder, monkeypatch, capsys):
    """`--push_to_hub` through the recipe, to test_hub's local Hub (through `huggingface_hub`'s own HTTP client)."""
    with pytest.raises(ValueError, match="`--push_to_hub` needs `--hub_model_id"):
        parse_recipe_arguments("cifar100", ["--push_to_hub"])
    repo = "someone/recipe-run"
    argv = quick_args(
        tmp_path / "run",
        tiny_checkpoint,
        "--dataset",
        str(imagefolder),
        "--push_to_hub",
        "--hub_model_id",
        repo,
        "--hub_private_repo",
        "true",
    )
    with LocalHub(tmp_path / "hub").running() as hub:
        hub.point_huggingface_hub_here(monkeypatch, tmp_path / "cache")
        run_script("train_cifar100.py", argv, monkeypatch)
        branches = hub.branches_of(repo)
        assert set(branches) == {"main", "task-0", "task-1"} and hub.visibility(repo) == "private"
        assert branches["main"] == branches["task-1"]
        stage = tmp_path / "run" / "tasks" / "task-1"
        pushed = hub.tree(repo, "task-1")["adapter_model.safetensors"]
        assert pushed == (stage / "adapter_model.safetensors").read_bytes()


def test_clip_recipe_with_the_text_classifier_and_classifier_alignment(tmp_path, imagefolder, monkeypatch, capsys):
    from test_clip import tiny_clip, tokenizer
    from transformers import CLIPImageProcessor, CLIPModel

    checkpoint = tmp_path / "clip"
    tiny_clip("clip", seed=2).save_pretrained(checkpoint)
    tokenizer().save_pretrained(checkpoint)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(checkpoint)
    argv = quick_args(
        tmp_path / "run",
        checkpoint,
        "--dataset",
        str(imagefolder),
        "--classifier",
        "text",
        "--alignment_epochs",
        "2",
        "--alignment_samples_per_class",
        "8",
        "--prompt_layers",
        "0",
        "1",
        "2",
    )
    run_script("train_cifar100.py", argv, monkeypatch)
    assert "CLIP-NSP² (this run)" in capsys.readouterr().out
    stage = tmp_path / "run" / "tasks" / "task-1"
    sequence = json.loads((stage / "sequence.json").read_text())
    assert sequence["settings"]["classifier_alignment"] and sequence["settings"]["alignment_epochs"] == 2
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(checkpoint), stage)
    assert model.peft_config["default"].classifier == "text" and len(model.class_names()) == CLASSES
    off = parse_recipe_arguments("cifar100", ["--classifier", "text", "--classifier_alignment", "false"])
    assert not off.training.classifier_alignment


def test_recipe_with_a_timm_checkpoint_and_continue_from(tmp_path, imagefolder, monkeypatch, capsys):
    """A timm-format folder is converted on load; `--continue_from` trains the dataset's other classes next."""
    from datasets import load_dataset
    from test_timm_vit import timm_state_dict, write_timm_folder

    checkpoint = write_timm_folder(tmp_path / "timm", timm_state_dict())
    two_classes = tmp_path / "two-classes"
    for split in ("train", "test"):
        for label in (0, 1):
            shutil.copytree(imagefolder / split / f"class_{label}", two_classes / split / f"class_{label}")
    first = quick_args(tmp_path / "first", checkpoint, "--dataset", str(two_classes), "--num_tasks", "1")
    run_script("train_cifar100.py", first, monkeypatch)
    source = tmp_path / "first" / "tasks" / "task-0"
    argv = quick_args(tmp_path / "next", checkpoint, "--dataset", str(imagefolder), "--continue_from", str(source))
    argv[argv.index("--num_tasks") + 1] = "1"
    run_script("train_cifar100.py", argv, monkeypatch)
    stage = tmp_path / "next" / "tasks" / "task-1"
    record = json.loads((stage / "sequence.json").read_text())
    assert [sorted(task) for task in record["tasks"]] == [["class_0", "class_1"], ["class_2", "class_3"]]
    assert record["continued_from"] == str(source) and record["finished_tasks"] == 2
    assert len(record["metrics"]["total"]) == 2 and not (tmp_path / "next" / "tasks" / "task-0").exists()
    class_names = json.loads((stage / "adapter_config.json").read_text())["class_names"]
    assert class_names == record["tasks"][0] + record["tasks"][1]
    assert len(load_dataset("imagefolder", data_dir=str(imagefolder))["test"]) == sum(record["metrics"]["total"][-1])


def test_imagefolder_recipe_follows_the_split_hint_resumes_and_pins_no_memory_on_cpu(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    """Your own data: 5 classes do not cut into 2 tasks; the error's advice (`--num_classes 4`) runs; a re-run after an
    interruption says where it resumes; a run without CUDA emits no `pin_memory` warning (one per DataLoader
    before)."""
    images = tmp_path / "my-images"
    write_images(images, "train", 4, seed=0, classes=5)
    write_images(images, "test", 2, seed=1, classes=5)
    run = tmp_path / "run"
    argv = quick_args(run, tiny_checkpoint, "--dataset", str(images), "--analytic_projection_size", "64")
    argv.remove("--use_cpu")  # as on a laptop without CUDA: `use_cpu` alone turns pinning off
    with pytest.raises(ValueError, match=r"5 classes cannot be cut into 2 equal tasks.*`--num_classes 4`"):
        run_script("train_imagefolder.py", argv, monkeypatch)
    argv += ["--num_classes", "4"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_script("train_imagefolder.py", argv, monkeypatch)
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]
    assert "Resuming" not in capsys.readouterr().out
    record = json.loads((run / "tasks" / "task-1" / "sequence.json").read_text())
    assert record["run_info"]["benchmark"] == "imagefolder" and len(record["tasks"]) == 2
    assert record["settings"]["temperature"] == 1.0 and record["settings"]["classifier"] == "analytic"
    # An interruption after task 0: its stage is the last one the progress pointer names.
    shutil.copy(run / "tasks" / "task-0" / "sequence.json", run / "progress.json")
    shutil.rmtree(run / "tasks" / "task-1")
    run_script("train_imagefolder.py", argv, monkeypatch)
    printed = capsys.readouterr().out
    assert (
        f"Resuming {run} after task 1 of 2 (last stage: {run / 'tasks' / 'task-0'}); task-1 continues from its "
        "start." in printed
    )
    assert [len(row) for row in json.loads((run / "summary.json").read_text())["accuracy_matrix"]] == [1, 2]
    run_script("train_imagefolder.py", argv, monkeypatch)
    assert f"{run} holds a finished run of 2 tasks: nothing to train" in capsys.readouterr().out


def test_imagefolder_defaults_are_for_your_own_data():
    args = parse_recipe_arguments("imagefolder", ["--dataset", "my/images"])
    training = args.training
    assert training.output_dir == str(Path("runs") / "imagefolder-nsp-seed2024") and args.num_tasks == 5
    assert (training.temperature, training.num_train_epochs, training.dataset_repeats) == (1.0, 5, 1)
    assert training.per_device_train_batch_size == 32 and args.peft_config.classifier == "analytic"
    assert not training.classifier_alignment  # the analytic head is the solution over every class already
    linear = parse_recipe_arguments("imagefolder", ["--dataset", "my/images", "--classifier", "linear"])
    assert linear.training.classifier_alignment and linear.peft_config.classifier == "linear"
    assert training.lr_decay_epochs == [2.0, 3.5] and not training.dataloader_pin_memory
    assert args.peft_config.eta1 == 0.97 and args.benchmark.eval_resize is None
    assert not parse_recipe_arguments("cifar100", []).training.dataloader_pin_memory  # no CUDA here
    text = parse_recipe_arguments("imagefolder", ["--dataset", "x", "--classifier", "text"]).peft_config
    assert text.text_templates[0] == "a photo of a {}."
    with pytest.raises(ValueError, match="`imagefolder` needs `--dataset`"):
        parse_recipe_arguments("imagefolder", [])


HELP_SCRIPT = """
import contextlib, io, json, runpy, sys
texts = {}
for script, flag in [(name, "--help") for name in sys.argv[1:]] + [(sys.argv[1], "--help_all")]:
    sys.argv = [script, flag]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        runpy.run_path(f"recipes/{script}", run_name="__main__")
    texts[f"{script} {flag}"] = out.getvalue()
loaded = sorted(module for module in ("peft_nsp.loop", "matplotlib") if module in sys.modules)
print(json.dumps({"texts": texts, "loaded": loaded}))
"""


def option_help(text: str, option: str) -> str:
    """The help of one option in an argparse help text, its lines joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"{option} "))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" " * 10))
    return " ".join(" ".join(lines[start:end]).split())


def test_help_is_per_recipe_short_and_leaves_the_training_stack_unloaded():
    scripts = ["train_cifar100.py", "train_imagenet_r.py", "train_domainnet.py", "train_imagefolder.py"]
    result = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *scripts], cwd=ROOT, capture_output=True, text=True, check=True
    )
    printed = json.loads(result.stdout)
    assert printed["loaded"] == []  # what made `--help` slow: the loop, the Trainer's plots
    helps = {script: " ".join(printed["texts"][f"{script} --help"].split()) for script in scripts}
    assert "(default: uoft-cs/cifar100)" in helps["train_cifar100.py"]
    assert "Required: the ImageNet-R root" in helps["train_imagenet_r.py"]
    assert "Required: the DomainNet root" in helps["train_domainnet.py"]
    assert "Required: your images" in helps["train_imagefolder.py"]
    assert (
        "Defaults for data that is not a benchmark of the paper: temperature 1 (NSPConfig's;"
        in helps["train_imagefolder.py"]
    )
    assert "Defaults: the authors' configuration of this benchmark" in helps["train_domainnet.py"]
    for script, name in zip(scripts, ["cifar100-10", "imagenet-r-10", "domainnet-10", "imagefolder"]):
        text = helps[script]
        assert f"(default: `runs/{name}-<method>-seed<seed>`" in text and "(default: None)" not in text
        assert "CIFAR-100" not in text.split("--data_layout")[0] or script == "train_cifar100.py"
        assert "--help_all" in text and "--torch_compile" not in text
        assert len(printed["texts"][f"{script} --help"].splitlines()) < 350
    own_data = printed["texts"]["train_imagefolder.py --help"]
    for option, default in (
        ("--num_tasks", "5"),
        ("--temperature", "1.0"),
        ("--num_train_epochs", "5"),
        ("--per_device_train_batch_size", "32"),
        ("--classifier_alignment", "True"),
    ):
        assert option_help(own_data, option).endswith(f"(default: {default})"), option
    assert option_help(printed["texts"]["train_domainnet.py --help"], "--temperature").endswith("(default: 30.0)")
    assert "--torch_compile" in printed["texts"]["train_cifar100.py --help_all"]


def test_a_class_order_of_a_class_subset_trains_those_classes():
    assert split_classes(10, 3, seed=0, class_order=[9, 2, 4, 7, 0, 5]) == [[9, 2], [4, 7], [0, 5]]
    with pytest.raises(ValueError, match=r"choose `num_tasks` among \[1, 2, 7\], or train 12 of them"):
        split_classes(14, 4, seed=0)
    with pytest.raises(ValueError, match=r"must be a permutation of range\(10\) or of a subset of it"):
        split_classes(10, 2, seed=0, class_order=[1, 1, 2, 3])


def test_the_analytic_head_in_a_recipe(tmp_path, tiny_checkpoint, monkeypatch):
    """`--classifier analytic`: classifier alignment off unless asked, M and λ passed on, the stages hold the head."""
    args = parse_recipe_arguments("imagefolder", ["--dataset", "my/images", "--classifier", "analytic"])
    assert not args.training.classifier_alignment and args.peft_config.classifier == "analytic"
    args = parse_recipe_arguments(
        "cifar100", ["--classifier", "analytic", "--analytic_projection_size", "64", "--analytic_ridge", "2.5"]
    )
    assert (args.peft_config.analytic_projection_size, args.peft_config.analytic_ridge) == (64, 2.5)
    images = tmp_path / "images"
    write_images(images, "train", 5, seed=0, classes=4)
    write_images(images, "test", 2, seed=1, classes=4)
    argv = quick_args(
        tmp_path / "run",
        tiny_checkpoint,
        "--dataset",
        str(images),
        "--classifier",
        "analytic",
        "--analytic_projection_size",
        "64",
    )
    run_script("train_imagefolder.py", argv, monkeypatch)
    stage = tmp_path / "run" / "tasks" / "task-1"
    config = json.loads((stage / "adapter_config.json").read_text())
    assert config["classifier"] == "analytic" and config["analytic_projection_size"] == 64
    model = PeftModel.from_pretrained(ViTModel.from_pretrained(tiny_checkpoint), stage)
    assert model.base_model.task_heads().fitted_tasks == 2


def test_push_to_hub_offline_stops_before_training_with_one_message(tmp_path, tiny_checkpoint):
    """No network: `--push_to_hub` is refused before anything trains, with the later push command, no traceback."""
    images = tmp_path / "images"
    write_images(images, "train", 2, seed=0, classes=2)
    argv = quick_args(
        tmp_path / "run",
        tiny_checkpoint,
        "--dataset",
        str(images),
        "--num_tasks",
        "1",
        "--push_to_hub",
        "--hub_model_id",
        "me/offline-run",
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train_imagefolder.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Hub cannot be reached" in done.stderr and "python -m peft_nsp.hub push" in done.stderr
    assert not (tmp_path / "run" / "tasks").exists()
