# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""`peft-nsp-classify` (`python -m peft_nsp.classify`): names and probabilities of a trained stage, checked against
`PeftModel.from_pretrained` + softmax; the errors a user meets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import huggingface_hub
import pytest
import torch
from datasets import ClassLabel
from hub_server import LocalHub
from huggingface_hub import HfApi
from peft import PeftModel
from PIL import Image
from testing_utils import IMAGE_SIZE, blob_images, tiny_model
from transformers import ViTImageProcessor, ViTModel

from peft_nsp import NSPConfig, NSPTrainer, VPTNSPConfig
from peft_nsp.classify import main
from peft_nsp.continual.stages import RunRecord, write_stage


NAMES = ["cat", "dog", "sea urchin"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A stage trained on three named classes from a local tiny base checkpoint (its `base_model_name_or_path`)."""
    root = tmp_path_factory.mktemp("classify")
    base = root / "base"
    tiny_model("vit", seed=5).save_pretrained(base)
    ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(base)
    data = blob_images(3, 6, seed=0).cast_column("label", ClassLabel(names=NAMES))
    args = NSPConfig(
        str(root / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=6,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=1,
    )
    trainer = NSPTrainer(
        ViTModel.from_pretrained(base, add_pooling_layer=False),
        args,
        train_dataset=data,
        processing_class=ViTImageProcessor.from_pretrained(base),
        peft_config=VPTNSPConfig(prompt_length=2, classifier="linear"),
    )
    trainer.train()
    folder = root / "stage"
    trainer.save_model(str(folder))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    return folder, base


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three test images: two files and a folder (with a subfolder image, a text file and a hidden file)."""
    root = tmp_path_factory.mktemp("images")
    rows = blob_images(3, 1, seed=4)
    (root / "album" / "more").mkdir(parents=True)
    paths = [root / "first.png", root / "album" / "b.png", root / "album" / "more" / "c.png"]
    for row, path in zip(rows, paths):
        row["image"].save(path)
    (root / "album" / "notes.txt").write_text("not an image")
    shutil.copy(paths[0], root / "album" / ".hidden.png")
    return root, paths


def expected_probabilities(folder, base, paths) -> list[dict[str, float]]:
    """Softmax over the logits of `PeftModel.from_pretrained`, pixels from the stage's image processor."""
    model = PeftModel.from_pretrained(ViTModel.from_pretrained(base, add_pooling_layer=False), folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    pixels = processor([Image.open(path).convert("RGB") for path in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = torch.softmax(model(pixel_values=pixels).logits, -1)
    return [{model.config.id2label[i]: float(p) for i, p in enumerate(row)} for row in probabilities]


def test_json_and_table_match_softmax_of_the_reloaded_adapter(stage, images, capsys):
    folder, base = stage
    root, paths = images
    main([str(folder), str(paths[0]), str(root / "album"), "--top_k", "3", "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert [entry["image"] for entry in printed] == [str(path) for path in paths]  # folder: sorted, images only
    for entry, want in zip(printed, expected_probabilities(folder, base, paths)):
        scores = [answer["score"] for answer in entry["predictions"]]
        assert scores == sorted(scores, reverse=True) and sorted(want) == sorted(NAMES)
        assert {answer["label"]: answer["score"] for answer in entry["predictions"]} == pytest.approx(want, abs=1e-5)
    main([str(folder), str(paths[1]), "--top_k", "2"])
    lines = capsys.readouterr().out.splitlines()
    want = sorted(expected_probabilities(folder, base, paths[1:2])[0].items(), key=lambda item: -item[1])[:2]
    assert len(lines) == 2
    for line, (label, probability) in zip(lines, want):
        path, rest = line.split("  ", 1)
        name, score = rest.strip().rsplit("  ", 1)
        assert (path, name.strip()) == (str(paths[1]), label) and float(score) == pytest.approx(probability, abs=1e-4)


def test_a_run_folder_stands_for_its_last_stage_and_the_module_runs(stage, images, tmp_path):
    folder, base = stage
    _, paths = images
    record = RunRecord(tasks=[NAMES], seed=0, method="VPT-NSP²", finished_tasks=1)
    write_stage(tmp_path, 0, record, lambda partial: shutil.copytree(folder, partial, dirs_exist_ok=True))
    result = subprocess.run(
        [sys.executable, "-m", "peft_nsp.classify", str(tmp_path), str(paths[2]), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"the last finished stage of {tmp_path}" in result.stderr
    (entry,) = json.loads(result.stdout)
    want = expected_probabilities(folder, base, paths[2:])[0]
    assert {answer["label"]: answer["score"] for answer in entry["predictions"]} == pytest.approx(want, abs=1e-5)


def test_a_hub_revision_by_name_or_flag(stage, images, tmp_path, monkeypatch, capsys):
    """`user/repo@task-0` and `user/repo --revision task-0` over HTTP (test_hub's local Hub), the base model from its
    own repository; a revision that does not exist is named."""
    folder, base = stage
    _, paths = images
    with LocalHub(tmp_path / "hub").running() as hub:
        hub.point_huggingface_hub_here(monkeypatch, tmp_path / "cache")
        api = HfApi()
        api.create_repo("someone/base")
        api.upload_folder(folder_path=base, repo_id="someone/base")
        published = shutil.copytree(folder, tmp_path / "published")
        config = published / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "someone/base"}))
        api.create_repo("someone/stages")
        api.upload_folder(folder_path=published, repo_id="someone/stages")
        api.create_branch("someone/stages", branch="task-0")
        renamed = {**json.loads(config.read_text()), "class_names": [name.upper() for name in NAMES]}
        api.upload_file(
            path_or_fileobj=json.dumps(renamed).encode(), path_in_repo="adapter_config.json", repo_id="someone/stages"
        )  # `main` moves on; `task-0` keeps the first names
        want = expected_probabilities(folder, base, paths[:1])[0]
        for argv, names in (
            (["someone/stages@task-0"], NAMES),
            (["someone/stages", "--revision", "task-0"], NAMES),
            (["someone/stages"], [name.upper() for name in NAMES]),
        ):
            main([*argv, str(paths[0]), "--json"])
            (entry,) = json.loads(capsys.readouterr().out)
            got = {answer["label"]: answer["score"] for answer in entry["predictions"]}
            assert got == pytest.approx({new: want[old] for old, new in zip(NAMES, names)}, abs=1e-5)
        with pytest.raises(SystemExit):
            main(["someone/stages@task-7", str(paths[0])])
        assert "Could not load `someone/stages` (revision `task-7`)" in " ".join(capsys.readouterr().err.split())


def test_errors_name_the_problem_and_the_fix(stage, images, tmp_path, monkeypatch, capsys):
    folder, _ = stage
    _, paths = images
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_text("not a png")
    cases = [
        ([str(tmp_path / "runs" / "x" / "tasks" / "task-3"), str(paths[0])], "No stage folder `.*task-3`"),
        ([str(tmp_path / "empty"), str(paths[0])], "holds no adapter .* and no finished run"),
        ([str(folder), str(tmp_path / "empty")], "No images in `.*empty`"),
        ([str(folder), str(tmp_path / "missing.png")], "`.*missing.png` does not exist"),
        ([str(folder), str(tmp_path / "broken.png")], "`.*broken.png` is not an image this machine can read"),
        ([str(folder), str(paths[0]), "--revision", "task-1"], "`--revision task-1` selects a revision of a Hub"),
        (["me/repo@task-3", str(paths[0]), "--revision", "task-1"], "names a revision and so does `--revision"),
        ([str(folder), str(paths[0]), "--top_k", "0"], "`--top_k` and `--batch_size` must be ≥ 1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert re.search(message, " ".join(capsys.readouterr().err.split())), message
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(SystemExit):
        main(["me/vpt-nsp-cifar100-10@task-3", str(paths[0])])
    error = " ".join(capsys.readouterr().err.split())
    assert "Could not load `me/vpt-nsp-cifar100-10` (revision `task-3`)" in error
    assert "the Hugging Face Hub cannot be reached (offline" in error
    assert "`hf download me/vpt-nsp-cifar100-10 --revision task-3`" in error
