# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark recipes end to end on tiny generated data, their command line, data loading and augmentation."""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, tiny_model
from peft import PeftModel
from PIL import Image
from synthetic import blob_images
from transformers import ViTImageProcessor, ViTModel

from peft_nsp.continual.augment import EvalTransform, PaperTrainTransform
from peft_nsp.scripts.arguments import DataArguments, parse_recipe_arguments
from peft_nsp.scripts.data import keep_classes, load_recipe_data, most_frequent_classes, per_class_subset

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random ViT saved with its image processor, as a user's local checkpoint."""
    path = tmp_path_factory.mktemp("model")
    tiny_model("vit", seed=3).save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def write_images(root: Path, split: str, per_class: int, seed: int) -> list[tuple[str, int]]:
    """Blob images as ``root/<split>/class_<c>/<i>.png``; returns (relative path, label) pairs."""
    written = []
    for i, row in enumerate(blob_images(CLASSES, per_class, seed=seed)):
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
        "--model_name_or_path", str(checkpoint), "--output_dir", str(output_dir), "--num_tasks", "2",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--statistics_batch_size", "8", "--learning_rate", "0.05", "--use_cpu", "--report_to", "none",
        "--dataloader_num_workers", "0", "--save_strategy", "no", "--disable_tqdm", "true", "--prompt_length", "2",
        "--logging_steps", "100", *extra,
    ]


def run_script(script: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(ROOT / "recipes" / script), run_name="__main__")


@pytest.mark.parametrize(
    ("script", "data", "extra", "expected_benchmark"),
    [
        ("train_cifar100.py", "imagefolder", (), "cifar100-2"),
        ("train_imagenet_r.py", "imagefolder", ("--test_split", "test"), "imagenet-r-2"),
        ("train_domainnet.py", "domainnet", ("--num_classes", "4"), "domainnet-2"),
    ],
)
def test_recipe_runs_two_tasks_end_to_end(script, data, extra, expected_benchmark, request, tmp_path, tiny_checkpoint,
                                          monkeypatch, capsys):
    root = request.getfixturevalue(data)
    run_script(script, quick_args(tmp_path, tiny_checkpoint, "--dataset", str(root), *extra), monkeypatch)
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmark"] == expected_benchmark and summary["method"] == "VPT-NSP²"
    matrix = np.array(summary["accuracy_matrix"])
    assert matrix.shape == (2, 2) and np.isnan(matrix[0, 1]) and 0 <= summary["metrics"]["final_accuracy"] <= 1
    assert "VPT-NSP² (this run)" in printed and "final accuracy" in printed
    for task in range(2):
        stage = tmp_path / "tasks" / f"task-{task}"
        sequence = json.loads((stage / "sequence.json").read_text())
        hyperparameters = sequence["hyperparameters"]
        assert sequence["run_info"]["benchmark"] == expected_benchmark and hyperparameters["temperature"] > 1
        assert hyperparameters["lr_scheduler_type"] == "multistep" and hyperparameters["lr_decay_epochs"] == [1.0, 1.6]
        assert (stage / "accuracy_matrix.png").stat().st_size > 0
    model = PeftModel.from_pretrained(ViTModel.from_pretrained(tiny_checkpoint), tmp_path / "tasks" / "task-1")
    assert len(model.class_order()) == CLASSES


def test_projection_off_runs_vpt_seq_and_the_paper_rows_are_printed(tmp_path, tiny_checkpoint, imagefolder,
                                                                     monkeypatch, capsys):
    argv = quick_args(tmp_path, tiny_checkpoint, "--dataset", str(imagefolder), "--projection", "off")
    argv[argv.index("--num_tasks") + 1] = "10"
    with pytest.raises(ValueError, match="4 classes cannot be cut into 10 equal tasks"):
        run_script("train_cifar100.py", argv, monkeypatch)
    argv[argv.index("--num_tasks") + 1] = "2"
    args = parse_recipe_arguments("cifar100", argv)
    assert args.method == "VPT-Seq" and not args.training.projection and args.training.ln_loss_weight == 0
    paper = parse_recipe_arguments("cifar100", ["--num_tasks", "20"])
    assert paper.benchmark.name == "cifar100-20" and paper.training.temperature == 25
    assert paper.training.learning_rate == 0.01 and paper.training.num_train_epochs == 100
    assert paper.training.lr_decay_epochs == [50, 80] and paper.training.weight_decay == 5e-5
    assert paper.training.per_device_train_batch_size == 256 and paper.training.seed == 2024
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_recipe_arguments("domainnet", ["--dataset", "x"]).training.per_device_train_batch_size == 64


def test_argument_errors_are_clear(tmp_path, tiny_checkpoint, imagefolder, monkeypatch, capsys):
    with pytest.raises(ValueError, match="Data directory `.*missing` not found"):
        run_script("train_domainnet.py", quick_args(tmp_path, tiny_checkpoint, "--dataset", str(tmp_path / "missing")),
                   monkeypatch)
    with pytest.raises(ValueError, match="needs `--dataset`"):
        parse_recipe_arguments("imagenet-r", [])
    with pytest.raises(SystemExit):
        parse_recipe_arguments("domainnet", ["--dataset", "x", "--data_layout", "tfrecords"])
    assert "--data_layout/--data-layout: invalid choice: 'tfrecords'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no DomainNet split lists"):
        load_recipe_data(DataArguments(dataset=str(imagefolder), data_layout="domainnet"), seed=0)
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
    with pytest.raises(ValueError, match="has no image processor"):
        run_script("train_cifar100.py", quick_args(tmp_path, without_processor, "--dataset", str(imagefolder)),
                   monkeypatch)


def test_missing_test_split_is_held_out_per_class(tmp_path):
    root = tmp_path / "flat"
    write_images(root, ".", 10, seed=0)
    data = load_recipe_data(DataArguments(dataset=str(root), test_fraction=0.2), seed=3)
    assert Counter(data.test[data.label_column]) == {c: 2 for c in range(CLASSES)}
    assert Counter(data.train[data.label_column]) == {c: 8 for c in range(CLASSES)}


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


def test_eval_transform_matches_the_vit_image_processor():
    images = [row["image"] for row in blob_images(3, 1, size=20)]
    processor = ViTImageProcessor(size={"height": 12, "width": 12}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(EvalTransform(12, [0.4, 0.5, 0.6], [0.2, 0.3, 0.4])(images), expected, atol=1e-5)


def test_train_transform_crops_flips_and_augments_reproducibly():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((30, 20), (16, 40))]
    transform = PaperTrainTransform(12, [0.5] * 3, [0.5] * 3)
    torch.manual_seed(1)
    first = transform(images)
    torch.manual_seed(1)
    assert first.shape == (2, 3, 12, 12) and torch.equal(first, transform(images))
    assert first.min() >= -1 and first.max() <= 1
    assert not torch.equal(first, transform(images))  # a new draw
    grey = Image.fromarray(np.full((9, 9), 51, dtype=np.uint8))  # crops and flips of a flat image stay flat
    flat = PaperTrainTransform(8, [0.0] * 3, [1.0] * 3, auto_augment=False)([grey])
    assert torch.allclose(flat, torch.full_like(flat, 0.2), atol=1e-6)
    with pytest.raises(ValueError, match="must be ≥ `image_size`"):
        PaperTrainTransform(32, [0.5] * 3, [0.5] * 3, resize_to=16)


def test_quickstart_trains_both_methods_and_reloads_identically(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """The README's run command on a slice of MNIST-5k with a tiny backbone (the real one is tested in test_offline)."""
    argv = ["--output_dir", str(tmp_path), "--model_name_or_path", str(tiny_checkpoint), "--train_per_class", "4",
            "--test_per_class", "2", "--epochs", "1", "--batch_size", "8", "--use_cpu", "true"]
    run_script("quickstart.py", argv, monkeypatch)
    printed = capsys.readouterr().out
    assert "same predictions on 64 test images: True" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    for method, folder in (("VPT-NSP²", "nsp"), ("VPT-Seq", "seq")):
        counts = np.array(summary[method]["accuracy_matrix"]["total"][-1])
        assert counts.tolist() == [4] * 5  # 2 digits × 2 test images per task, 5 tasks
        assert (tmp_path / folder / "tasks" / "task-4" / "adapter_model.safetensors").is_file()
        assert f"| {method} |" in printed
    assert (tmp_path / "accuracy_curves.png").stat().st_size > 0
    nsp = json.loads((tmp_path / "nsp" / "tasks" / "task-4" / "sequence.json").read_text())
    seq = json.loads((tmp_path / "seq" / "tasks" / "task-4" / "sequence.json").read_text())
    assert nsp["projection"] and not seq["projection"] and seq["hyperparameters"]["ln_loss_weight"] == 0
    assert nsp["tasks"] == seq["tasks"]


def test_push_to_hub_flag_pushes_every_task(tmp_path, tiny_checkpoint, imagefolder, monkeypatch, capsys):
    """`--push_to_hub` through the recipe; the Hub is the recorded `HfApi` double of test_hub (injected as `HfApi`)."""
    from test_hub import REPO, RecordingHub

    hub = RecordingHub()
    monkeypatch.setattr("peft_nsp.hub.push.HfApi", lambda token=None: hub)
    with pytest.raises(ValueError, match="`--push_to_hub` needs `--hub_model_id"):
        parse_recipe_arguments("cifar100", ["--push_to_hub"])
    argv = quick_args(tmp_path, tiny_checkpoint, "--dataset", str(imagefolder), "--push_to_hub", "--hub_model_id",
                      REPO, "--hub_private_repo", "true")
    run_script("train_cifar100.py", argv, monkeypatch)
    assert set(hub.branches) == {"main", "task-0", "task-1"} and hub.private is True
    assert hub.branches["main"] == hub.branches["task-1"]
    pushed = hub.commits[hub.branches["task-1"]][2]
    assert pushed["adapter_model.safetensors"] == (tmp_path / "tasks" / "task-1" / "adapter_model.safetensors").read_bytes()


def test_clip_recipe_with_the_text_classifier_and_head_refinement(tmp_path, imagefolder, monkeypatch, capsys):
    from test_clip import tiny_clip, tokenizer
    from transformers import CLIPImageProcessor, CLIPModel

    checkpoint = tmp_path / "clip"
    tiny_clip("clip", seed=2).save_pretrained(checkpoint)
    tokenizer().save_pretrained(checkpoint)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(checkpoint)
    paper = parse_recipe_arguments("cifar100", ["--classifier", "text"])
    assert paper.method == "CLIP-NSP²" and paper.model.head_refinement and paper.model.prompt_layers == [0, 1, 2]
    assert paper.model.model_name_or_path == "openai/clip-vit-base-patch16"
    assert (paper.training.learning_rate, paper.training.num_train_epochs, paper.model.eta) == (0.001, 20, 0.98)
    assert paper.training.per_device_train_batch_size == 220 and paper.training.lr_decay_epochs == [10, 16]
    argv = quick_args(tmp_path / "run", checkpoint, "--dataset", str(imagefolder), "--classifier", "text",
                      "--refine_epochs", "2", "--refine_samples_per_class", "8")
    run_script("train_cifar100.py", argv, monkeypatch)
    assert "CLIP-NSP² (this run)" in capsys.readouterr().out
    stage = tmp_path / "run" / "tasks" / "task-1"
    sequence = json.loads((stage / "sequence.json").read_text())
    assert sequence["hyperparameters"]["head_refinement"]["refine_epochs"] == 2
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(checkpoint), stage)
    assert model.peft_config["default"].classifier == "text" and len(model.class_order()) == CLASSES
