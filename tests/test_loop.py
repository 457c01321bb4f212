# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The class-incremental loop: metrics, resumability, baselines, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from peft import PeftModel
from testing_utils import blob_images, prompts, tiny_model, to_tensor
from transformers import TrainerCallback

from peft_nsp import VPTNSPConfig
from peft_nsp.continual.data import split_classes
from peft_nsp.loop import ClassIncrementalConfig, plan_tasks, run_class_incremental
from peft_nsp.trainer import NSPConfig


TRAIN = blob_images(6, 6)
TEST = blob_images(6, 3, seed=1)


def run(output_dir, callbacks=(), **kwargs):
    arguments = dict(
        output_dir=str(output_dir),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=5,
        save_strategy="steps",
        save_steps=2,
        logging_steps=50,
    )
    arguments.update(kwargs)
    joint = arguments.pop("joint", False)
    test = arguments.pop("test", TEST)
    peft_config = arguments.pop("peft_config", VPTNSPConfig(prompt_length=2, classifier="linear"))
    transform = arguments.pop("train_transform", to_tensor)
    run_info = arguments.pop("run_info", {})
    hooks = {key: arguments.pop(key) for key in ("on_stage_saved", "stage_store") if key in arguments}
    return run_class_incremental(
        tiny_model("vit", seed=2),
        peft_config,
        NSPConfig(**arguments),
        ClassIncrementalConfig(num_tasks=3, joint=joint, run_info=run_info),
        TRAIN,
        test,
        train_transform=transform,
        callbacks=callbacks,
        **hooks,
    )


def test_accuracy_matrix_matches_an_independent_evaluation_of_every_stage(tmp_path):
    saved_stages = []

    def on_stage_saved(stage, task):  # the pointer must already name the stage when the hook runs
        progress = json.loads((tmp_path / "progress.json").read_text())
        saved_stages.append((stage, task, progress["finished_tasks"], (stage / "adapter_config.json").exists()))

    result = run(tmp_path, run_info={"benchmark": "toy"}, on_stage_saved=on_stage_saved)
    stages = [tmp_path / "tasks" / f"task-{t}" for t in range(3)]
    assert saved_stages == [(stages[t], t, t + 1, True) for t in range(3)]
    matrix = result.metrics.accuracy_matrix
    assert result.tasks == split_classes(6, 3, seed=5)
    names = TRAIN.features["label"].names
    for stage in range(3):
        model = PeftModel.from_pretrained(tiny_model("vit", seed=2), tmp_path / "tasks" / f"task-{stage}").eval()
        order = [c for task in result.tasks[: stage + 1] for c in task]  # the dataset's class ids, column by column
        assert model.class_names() == [names[c] for c in order]
        assert model.config.id2label == {i: names[c] for i, c in enumerate(order)}
        for task in range(stage + 1):
            rows = [r for r in TEST if r["label"] in result.tasks[task]]
            with torch.no_grad():
                logits = model(pixel_values=to_tensor([r["image"] for r in rows])).logits
            predicted = [order[i] for i in logits.argmax(-1).tolist()]
            accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
            assert matrix[stage, task] == pytest.approx(accuracy)
        saved = json.loads((tmp_path / "tasks" / f"task-{stage}" / "sequence.json").read_text())
        assert saved["finished_tasks"] == stage + 1
        assert saved["tasks"] == [[names[c] for c in task] for task in result.tasks]
        assert saved["run_info"] == {"benchmark": "toy"} and saved["method"] == "VPT-NSP²"
        assert saved["settings"]["learning_rate"] == 0.05 and saved["settings"]["seed"] == 5
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["metrics"] == result.metrics.to_dict()
    card = (tmp_path / "tasks" / "task-2" / "README.md").read_text()
    assert "library_name: peft" in card and "after task 2" in card  # our card, not PEFT's generic one
    for name in ("accuracy_matrix.png", "accuracy_curve.png", "metrics.json", "adapter_model.safetensors"):
        assert (tmp_path / "tasks" / "task-2" / name).stat().st_size > 0


class Interrupt(TrainerCallback):
    """Raise when training of task ``task`` reaches ``step`` (0: as it begins)."""

    def __init__(self, task: int, step: int):
        self.task, self.step, self.trainings = task, step, -1

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainings += 1
        if self.trainings == self.task and self.step == 0:
            raise KeyboardInterrupt("simulated kill before the task")

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainings == self.task and state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill inside the task")


def final_state(result):
    return result.metrics.to_dict(), [p.detach() for p in prompts(result.model)]


@pytest.mark.parametrize(("task", "step"), [(2, 0), (1, 3)], ids=["after-task-2", "mid-task-2"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, task, step):
    reference_metrics, reference_prompts = final_state(run(tmp_path / "reference"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", callbacks=[Interrupt(task, step)])
    progress = json.loads((tmp_path / "killed" / "progress.json").read_text())
    assert progress["finished_tasks"] == task
    if step:
        assert (tmp_path / "killed" / "training" / f"task-{task}" / "checkpoint-2").is_dir()
    metrics, prompts = final_state(run(tmp_path / "killed"))
    assert metrics == reference_metrics
    for a, b in zip(prompts, reference_prompts):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_resuming_with_another_split_is_refused(tmp_path):
    run(tmp_path, num_train_epochs=1)
    with pytest.raises(ValueError, match="holds a run with another task split"):
        run(tmp_path, num_train_epochs=1, seed=6)


def test_vpt_seq_and_joint_baselines_share_the_code_path(tmp_path):
    seq = run(tmp_path / "seq", projection=False, ln_loss_weight=0.0, num_train_epochs=1)
    assert seq.metrics.num_tasks == 3 and seq.record.method == "VPT-Seq"
    # The statistics are still folded in (so the adapter can be continued with the projection); none was used.
    assert seq.model.base_model.tasks_seen() == 3 and seq.record.settings["projection"] is False
    joint = run(tmp_path / "joint", joint=True, num_train_epochs=1)
    assert joint.tasks == [[c for task in split_classes(6, 3, seed=5) for c in task]]
    assert joint.metrics.num_tasks == 1 and 0.0 <= joint.metrics.final_accuracy <= 1.0
    assert joint.record.method == "Upper bound (joint)"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (TRAIN.remove_columns("label"), r"has 0 ClassLabel columns \(\[\]\).*cast one to a `ClassLabel` column"),
        (TRAIN.cast_column("label", Value("int64")), "has 0 ClassLabel columns"),
        (
            Dataset.from_dict(
                {"image": [[0.0]] * 4, "label": [0, 1, 2, 3]},
                features=Features({"image": [Value("float32")], "label": ClassLabel(num_classes=6)}),
            ),
            "has 0 Image columns.*cast one to a `datasets.Image` column",
        ),
        (DatasetDict({"train": TRAIN}), "must be a `datasets.Dataset`"),
    ],
)
def test_bad_datasets_are_clear_errors(tmp_path, train, message):
    with pytest.raises(ValueError, match=message):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            NSPConfig(output_dir=str(tmp_path), report_to="none"),
            ClassIncrementalConfig(num_tasks=3),
            train,
            TEST,
            train_transform=to_tensor,
        )


def test_named_columns_that_do_not_fit_are_clear_errors(tmp_path):
    args = NSPConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="no label column `target`"):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            dataclasses.replace(args, label_column="target"),
            ClassIncrementalConfig(num_tasks=3),
            TRAIN,
            TEST,
            train_transform=to_tensor,
        )
    with pytest.raises(ValueError, match="must be a `ClassLabel` column"):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            dataclasses.replace(args, label_column="label"),
            ClassIncrementalConfig(num_tasks=3),
            TRAIN.cast_column("label", Value("int64")),
            TEST,
            train_transform=to_tensor,
        )


def test_indivisible_classes_and_empty_tasks_are_clear_errors(tmp_path):
    args = NSPConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(
        ValueError, match=r"6 classes cannot be cut into 4 equal tasks of at least two.*among \[1, 2, 3\]"
    ):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            args,
            ClassIncrementalConfig(num_tasks=4),
            TRAIN,
            TEST,
            train_transform=to_tensor,
        )
    with pytest.raises(ValueError, match="6 classes cannot be cut into 6 equal tasks.*one-class task trains nothing"):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            args,
            ClassIncrementalConfig(num_tasks=6),
            TRAIN,
            TEST,
            train_transform=to_tensor,
        )
    without_classes = TRAIN.select([i for i, label in enumerate(TRAIN["label"]) if label not in (1, 4)])
    with pytest.raises(ValueError, match=r"`train_dataset` has no samples of classes \['class_1', 'class_4'\]"):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            args,
            ClassIncrementalConfig(num_tasks=3),
            without_classes,
            TEST,
            train_transform=to_tensor,
        )
    test_without_class_4 = TEST.select([i for i, label in enumerate(TEST["label"]) if label != 4])
    with pytest.warns(UserWarning, match=r"`test_dataset` has no samples of classes \[4\]"):
        run(tmp_path / "warned", num_train_epochs=1, test=test_without_class_4)
    with pytest.raises(ValueError, match="must be a permutation of range"):
        split_classes(6, 3, seed=0, class_order=[0, 1, 2, 3, 4, 4])


def test_processor_transform_uses_the_image_processor():
    from transformers import ViTImageProcessor

    from peft_nsp.continual import processor_transform

    processor = ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    images = [TRAIN[0]["image"], TRAIN[1]["image"].convert("L")]
    pixels = processor_transform(processor)(images)
    assert pixels.shape == (2, 3, 8, 8)
    expected = torch.tensor(np.asarray(images[0].resize((8, 8), resample=2)).reshape(-1, 3), dtype=torch.float32)
    torch.testing.assert_close(pixels[0].permute(1, 2, 0).reshape(-1, 3), expected / 127.5 - 1, atol=0.02, rtol=0)


def test_a_failing_stage_hook_stops_the_run_with_its_error_and_keeps_the_stage(tmp_path):
    def on_stage_saved(stage, task):
        raise ValueError(f"push refused after task {task}")

    with pytest.raises(ValueError, match="push refused after task 0"):
        run(tmp_path, on_stage_saved=on_stage_saved)
    assert json.loads((tmp_path / "progress.json").read_text())["finished_tasks"] == 1
    assert (tmp_path / "tasks" / "task-0" / "adapter_model.safetensors").is_file()


def ordered_run(folder, class_order, num_tasks, base_model=None):
    """One epoch over the classes of ``class_order``, in that order."""
    args = NSPConfig(
        output_dir=str(folder),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    return run_class_incremental(
        base_model or tiny_model("vit", seed=2),
        VPTNSPConfig(prompt_length=2, classifier="linear"),
        args,
        ClassIncrementalConfig(num_tasks=num_tasks, class_order=class_order),
        TRAIN,
        TEST,
        train_transform=to_tensor,
    )


def test_a_class_order_of_a_subset_trains_and_tests_those_classes_only(tmp_path):
    """The split hint's advice: a `class_order` of some of the classes."""
    result = ordered_run(tmp_path, [4, 1, 0, 5], num_tasks=2)
    names = TRAIN.features["label"].names
    assert result.record.tasks == [[names[4], names[1]], [names[0], names[5]]]
    assert result.model.base_model.class_names() == [names[c] for c in (4, 1, 0, 5)]
    assert result.metrics.to_dict()["total"][-1] == [6, 6]  # 3 test images of each of the 4 classes, 2 per task
    with pytest.raises(ValueError, match="distinct new class ids"):
        ordered_run(tmp_path / "repeated", [4, 4, 0, 5], num_tasks=2)


def test_stages_get_the_base_models_image_processor_or_a_warning(tmp_path):
    from transformers import ViTImageProcessor, ViTModel, pipeline

    with pytest.warns(UserWarning, match="no `processing_class`.*pipeline"):
        ordered_run(tmp_path / "warned", [0, 1], num_tasks=1)
    folder = tmp_path / "base"
    tiny_model("vit", seed=2).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    ordered_run(tmp_path / "found", [0, 1], num_tasks=1, base_model=ViTModel.from_pretrained(folder))
    stage = tmp_path / "found" / "tasks" / "task-0"
    assert (stage / "preprocessor_config.json").is_file()
    answer = pipeline("image-classification", model=str(stage))(TEST[0]["image"])
    assert {a["label"] for a in answer} == set(TRAIN.features["label"].names[:2])


# ----------------------------------------------------------------------------------------------------------
# the run's settings, its task plan and the stage store
# ----------------------------------------------------------------------------------------------------------
def test_the_task_plan_is_a_step_of_its_own_and_matches_a_seeded_shuffle():
    names = [f"c{i}" for i in range(8)]
    for seed in (0, 7):
        order = np.random.default_rng(seed).permutation(8).tolist()  # the authors' shuffle, written out
        expected = [[names[c] for c in order[t * 2 : t * 2 + 2]] for t in range(4)]
        assert plan_tasks(ClassIncrementalConfig(num_tasks=4), names, seed) == expected
    assert plan_tasks(ClassIncrementalConfig(num_tasks=2, class_order=[5, 1, 2, 7]), names, 0) == [
        ["c5", "c1"],
        ["c2", "c7"],
    ]
    assert plan_tasks(ClassIncrementalConfig(num_tasks=2, joint=True), names, 3) == [
        [c for task in plan_tasks(ClassIncrementalConfig(num_tasks=2), names, 3) for c in task]
    ]
    # A continued adapter's tasks come first; the other classes are shuffled among themselves.
    inherited = [["c3", "c0"]]
    others = [c for c in range(8) if c not in (3, 0)]
    order = [others[i] for i in np.random.default_rng(1).permutation(6).tolist()]
    assert plan_tasks(ClassIncrementalConfig(num_tasks=3), names, 1, inherited) == [
        ["c3", "c0"],
        *[[names[c] for c in order[t * 2 : t * 2 + 2]] for t in range(3)],
    ]
    with pytest.raises(ValueError, match=r"lack classes of the continued adapter: \['zebra'\]"):
        plan_tasks(ClassIncrementalConfig(num_tasks=3), names, 1, [["zebra", "c0"]])
    with pytest.raises(ValueError, match="distinct new class ids"):
        plan_tasks(ClassIncrementalConfig(num_tasks=1, class_order=[3, 1]), names, 1, inherited)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_tasks": 0}, "`num_tasks` must be an integer ≥ 1"),
        ({"num_tasks": 2.5}, "`num_tasks` must be an integer ≥ 1"),
        ({"num_tasks": 2, "class_order": [1, 1]}, "distinct new class ids"),
        ({"num_tasks": 2, "run_info": {"when": object()}}, "`run_info` must be JSON-serialisable"),
    ],
)
def test_the_runs_settings_are_checked_when_made(settings, message):
    with pytest.raises(ValueError, match=message):
        ClassIncrementalConfig(**settings)


class FolderStore:
    """A `StageStore` that is not the Hub: stages copied into a folder per name and revision."""

    def __init__(self, root):
        self.root, self.published, self.fetched = root, [], []

    def publish(self, stage, task):
        shutil.copytree(stage, self.root / "me" / "run" / f"task-{task}", dirs_exist_ok=True)
        self.published.append((stage.name, task))

    def fetch(self, name, revision=None):
        self.fetched.append((name, revision))
        return self.root / name / revision


def test_another_stage_store_replaces_the_hub_on_both_sides(tmp_path):
    """`stage_store` publishes every stage and serves `continue_from` that is no folder, checked as a stage."""
    store = FolderStore(tmp_path / "store")
    first = run(tmp_path / "first", stage_store=store, num_train_epochs=1)
    assert store.published == [("task-0", 0), ("task-1", 1), ("task-2", 2)]
    assert (store.root / "me/run/task-1/adapter_model.safetensors").read_bytes() == (
        tmp_path / "first/tasks/task-1/adapter_model.safetensors"
    ).read_bytes()
    args = NSPConfig(str(tmp_path / "continued"), num_train_epochs=1, report_to="none", use_cpu=True, seed=5)
    continued = run_class_incremental(
        tiny_model("vit", seed=2),
        None,
        args,
        ClassIncrementalConfig(
            num_tasks=1, class_order=[c for task in first.tasks[2:] for c in task], continue_from="me/run@task-1"
        ),
        TRAIN,
        TEST,
        train_transform=to_tensor,
        stage_store=store,
    )
    assert store.fetched == [("me/run", "task-1")]
    assert continued.record.tasks == first.record.tasks and continued.record.continued_from == "me/run@task-1"
    damaged = store.root / "me/run/task-0/adapter_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="damaged after it was written"):
        run_class_incremental(
            tiny_model("vit", seed=2),
            None,
            dataclasses.replace(args, output_dir=str(tmp_path / "again")),
            ClassIncrementalConfig(num_tasks=2, continue_from="me/run@task-0"),
            TRAIN,
            TEST,
            train_transform=to_tensor,
            stage_store=store,
        )
