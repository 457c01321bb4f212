# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Nothing silently poisoned, dropped or stuck: non-finite values, loads that do not fit, interrupted checkpoints,
changed settings on resume, a stalled Hub, two runs on one folder, full disks, damaged files."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import time

import pytest
import torch
from filelock import FileLock
from hub_server import Fault, LocalHub
from peft import PeftModel, get_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_hub import REPO
from test_loop import TEST, TRAIN, Interrupt, final_state, run
from testing_utils import tiny_config, tiny_model, to_tensor
from transformers import TrainerCallback, ViTModel

from peft_nsp import VPTNSPConfig
from peft_nsp.hub import HubPushError, HubStageStore, materialize_stage
from peft_nsp.hub.push import push_with_deadline
from peft_nsp.loop import ClassIncrementalConfig
from peft_nsp.loop import class_incremental as loop
from peft_nsp.trainer import NSPConfig
from peft_nsp.tuner import NonFiniteError


IMAGES = to_tensor([row["image"] for row in TRAIN.select(range(6))])


def folded_model(**config) -> PeftModel:
    model = get_peft_model(tiny_model("vit", seed=2), VPTNSPConfig(prompt_length=2, classifier="linear", **config))
    model.add_task(["a", "b"])
    model.update_null_space([IMAGES])
    return model


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "vpt_nsp" in k}


# ------------------------------------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("poison", ["nan", "inf", "huge"])
@pytest.mark.parametrize("mode", ["adaptive", "times"])
def test_a_non_finite_statistics_batch_changes_nothing(poison, mode):
    model = folded_model(threshold_mode=mode)
    before = state_of(model)
    bad = IMAGES.clone()
    bad[0, 0, 0, 0] = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30}[poison]
    with pytest.raises(NonFiniteError, match="non-finite values .* in layer 0 C1.*Nothing was changed"):
        model.update_null_space([IMAGES, bad])
    assert all(torch.equal(before[k], v) for k, v in state_of(model).items())
    assert model.tasks_seen() == 1


class Poison(TrainerCallback):
    """Make the pixels NaN from task ``task`` on (a transform that goes bad mid-run)."""

    def __init__(self, transform, task: int):
        self.transform, self.task, self.trainings = transform, task, -1

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainings += 1
        self.transform.poisoned = self.trainings >= self.task


class PoisonableTransform:
    def __init__(self):
        self.poisoned = False

    def __call__(self, images):
        pixels = to_tensor(images)
        return torch.full_like(pixels, float("nan")) if self.poisoned else pixels


def test_nan_training_data_stops_the_run_naming_task_and_step_and_keeps_the_last_stage(tmp_path):
    transform = PoisonableTransform()
    with pytest.raises(NonFiniteError, match=r"training loss of task 1 became nan at step 1.*stages and checkpoints"):
        run(tmp_path, callbacks=[Poison(transform, 1)], train_transform=transform)
    assert json.loads((tmp_path / "progress.json").read_text())["finished_tasks"] == 1
    assert not (tmp_path / "tasks" / "task-1").exists()
    reloaded = PeftModel.from_pretrained(tiny_model("vit", seed=2), tmp_path / "tasks" / "task-0")
    reloaded.base_model.check_finite()  # the stage that was kept holds finite values only


class BreakHead(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.base_model.vpt_nsp_head["default"].heads[-1].weight[0, 0] = float("nan")


def test_a_non_finite_adapter_is_never_saved(tmp_path):
    with pytest.raises(NonFiniteError, match=r"Adapter `default`: non-finite values .*vpt_nsp_head"):
        run(tmp_path, callbacks=[BreakHead()])
    assert not (tmp_path / "progress.json").exists() and not (tmp_path / "tasks" / "task-0").exists()


# ------------------------------------------------------------------------------------------------ loads that do not fit
def test_loads_that_do_not_fit_are_refused_with_what_the_adapter_was_trained_on(tmp_path):
    deep = get_peft_model(tiny_model("vit", num_hidden_layers=4), VPTNSPConfig(prompt_length=2))
    deep.add_task(2)
    deep.save_pretrained(tmp_path / "deep")
    with pytest.raises(ValueError, match=r"made on a `ViTModel` with 4 blocks.*num_hidden_layers 4 \(adapter\) vs 2"):
        PeftModel.from_pretrained(tiny_model("vit"), tmp_path / "deep")
    heads8 = ViTModel(tiny_config("vit", num_attention_heads=8), add_pooling_layer=False)
    folded_model().save_pretrained(tmp_path / "heads4")
    with pytest.raises(ValueError, match=r"num_attention_heads 4 \(adapter\) vs 8 \(this model\)"):
        PeftModel.from_pretrained(heads8, tmp_path / "heads4")
    # A config that lost `task_classes`: the checkpoint's heads would be dropped; refused, listing them.
    config_path = tmp_path / "heads4" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "task_classes": [], "class_names": []}))
    with pytest.raises(ValueError, match=r"2 not in this model \(.*vpt_nsp_head.*trained on a `ViTModel`.*0 task"):
        PeftModel.from_pretrained(tiny_model("vit", seed=2), tmp_path / "heads4")


def test_a_dinov2_backbone_adapter_does_not_load_onto_its_classifier_model(tmp_path):
    model = get_peft_model(tiny_model("dinov2"), VPTNSPConfig(prompt_length=2))
    model.add_task(2)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"head_input_size 32 \(adapter\) vs 64"):
        PeftModel.from_pretrained(tiny_model("dinov2", classification=True), tmp_path)


# ------------------------------------------------------------------------------------------------ interrupted checkpoints
@pytest.mark.parametrize("damage", ["state-missing", "state-truncated"])
def test_a_half_written_checkpoint_is_set_aside_and_the_run_ends_identically(tmp_path, damage, caplog):
    reference_metrics, reference_prompts = final_state(run(tmp_path / "reference"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", callbacks=[Interrupt(1, 5)])  # checkpoints at steps 2 and 4 of task 1
    broken = tmp_path / "killed" / "training" / "task-1" / "checkpoint-4"
    state = broken / "trainer_state.json"
    if damage == "state-missing":
        state.unlink()  # killed before transformers wrote its last file
    else:
        state.write_text(state.read_text()[:40])  # killed while writing it
    with caplog.at_level(logging.WARNING, logger="peft_nsp.continual.stages"):
        metrics, prompts = final_state(run(tmp_path / "killed"))
    assert f"Removing the incomplete checkpoint `{broken}`" in caplog.text
    assert metrics == reference_metrics
    for a, b in zip(prompts, reference_prompts):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not any((tmp_path / "killed" / "training").iterdir())  # finished tasks keep no checkpoints


def test_a_full_disk_while_checkpointing_is_named_and_the_rerun_ends_identically(tmp_path, monkeypatch):
    reference_metrics, _ = final_state(run(tmp_path / "reference"))
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "optimizer.pt" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"No space left on the device while writing a checkpoint of task 0.*Free space"):
        run(tmp_path / "full")
    monkeypatch.setattr(torch, "save", real_save)
    assert final_state(run(tmp_path / "full"))[0] == reference_metrics


def test_a_full_disk_while_writing_a_stage_keeps_the_previous_one(tmp_path, monkeypatch):
    from peft_nsp.continual import stages

    real = stages.write_atomically

    def full_after_task_0(path, data):
        if "task-1" in str(path):
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(stages, "write_atomically", full_after_task_0)
    with pytest.raises(OSError, match=r"No space left on the device while writing the stage of task 1"):
        run(tmp_path)
    assert json.loads((tmp_path / "progress.json").read_text())["finished_tasks"] == 1
    assert (tmp_path / "tasks" / "task-0" / "adapter_model.safetensors").is_file()


def _save_file_hitting(limit: str, where: str, real):
    """`safe_save_file` whose writes into a path containing ``where`` hit ``limit``: a real file-size limit
    (``RLIMIT_FSIZE``, SIGXFSZ ignored, as under `ulimit -f`) or the error safetensors raises on a full disk."""

    def save_file(tensors, filename, *args, **kwargs):
        if where not in str(filename):
            return real(tensors, filename, *args, **kwargs)
        if limit == "full-disk":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))
        try:
            return real(tensors, filename, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    return save_file


@pytest.mark.parametrize("limit", ["file-size-limit", "full-disk"])
@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("task-1/checkpoint-2", r"while writing a checkpoint of task 1 .*a half-written checkpoint is set aside"),
        (".task-1.partial", r"while writing the stage of task 1 .*the half-written stage folder was removed"),
    ],
    ids=["checkpoint", "stage"],
)
def test_a_disk_limit_inside_safetensors_is_named_and_the_rerun_completes(
    tmp_path, monkeypatch, limit, where, message
):
    import peft.peft_model

    real = peft.peft_model.safe_save_file
    monkeypatch.setattr(peft.peft_model, "safe_save_file", _save_file_hitting(limit, where, real))
    reason = r"A file-size limit was reached \(`ulimit -f`\)" if limit == "file-size-limit" else "No space left on the"
    with pytest.raises(OSError, match=rf"{reason}.* {message}.*\(or raise the limit\) and re-run the same") as error:
        run(tmp_path, num_train_epochs=1)
    assert isinstance(error.value.__cause__, SafetensorError)
    assert json.loads((tmp_path / "progress.json").read_text())["finished_tasks"] == 1
    assert not (tmp_path / "tasks" / ".task-1.partial").exists() and not (tmp_path / "tasks" / "task-1").exists()
    monkeypatch.setattr(peft.peft_model, "safe_save_file", real)
    assert run(tmp_path, num_train_epochs=1).metrics.num_tasks == 3


def test_checkpoints_of_a_task_whose_stage_is_written_never_stay(tmp_path, monkeypatch):
    """Killed between the pointer of task 0 and the removal of its checkpoints: the resumed run removes them."""
    real = shutil.rmtree

    def killed_before_removing(path, *args, **kwargs):
        if str(path) == str(tmp_path / "training" / "task-0"):
            raise KeyboardInterrupt("simulated kill after `progress.json` of task 0")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loop.shutil, "rmtree", killed_before_removing)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, num_train_epochs=1)
    monkeypatch.setattr(loop.shutil, "rmtree", real)
    assert json.loads((tmp_path / "progress.json").read_text())["finished_tasks"] == 1
    assert any((tmp_path / "training" / "task-0").glob("checkpoint-*"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, num_train_epochs=1, callbacks=[Interrupt(0, 0)])  # stopped as task 1 begins
    assert not (tmp_path / "training" / "task-0").exists()


# ------------------------------------------------------------------------------------------------ changed settings
def test_a_resume_with_changed_settings_is_refused_or_recorded(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, callbacks=[Interrupt(2, 0)])
    with pytest.raises(
        ValueError,
        match=r"other settings: `learning_rate`: 0.05 \(run\) → 0.1 \(now\).*"
        r"`resume_with_changed_settings=True`",
    ):
        run(tmp_path, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"`eta1`: 0.97 \(run\) → 0.5 \(now\)"):
        run(tmp_path, peft_config=VPTNSPConfig(prompt_length=2, eta1=0.5, classifier="linear"))
    result = run(tmp_path, learning_rate=0.1, resume_with_changed_settings=True)
    assert result.record.settings_changes == [{"task": 2, "changed": {"learning_rate": [0.05, 0.1]}}]
    assert result.record.settings["learning_rate"] == 0.05  # what the run started with
    card = (tmp_path / "tasks" / "task-2" / "README.md").read_text()
    assert "from task 2: `learning_rate` 0.05 → 0.1" in card


def _killed_copies(tmp_path, names, task, step=0):
    """A run killed in task ``task`` (at ``step``; 0: as it begins), copied to the folders ``names``."""
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", num_train_epochs=1, callbacks=[Interrupt(task, step)])
    return [shutil.copytree(tmp_path / "killed", tmp_path / name) for name in names]


def _adapter(stage):
    return json.loads((stage / "adapter_config.json").read_text()), load_file(stage / "adapter_model.safetensors")


def test_a_changed_eta_applies_from_the_next_task_and_a_prompt_length_change_is_refused(tmp_path):
    changed, unchanged = _killed_copies(tmp_path, ["changed", "unchanged"], task=1)
    for allowed in (False, True):  # no flag makes the prompts' length changeable
        with pytest.raises(
            ValueError,
            match=r"`prompt_length`: 2 \(run\) → 3 \(now\).*`prompt_length` cannot "
            r"change on resume.*start a new `output_dir`",
        ):
            run(
                changed,
                num_train_epochs=1,
                peft_config=VPTNSPConfig(prompt_length=3, classifier="linear"),
                resume_with_changed_settings=allowed,
            )
    result = run(
        changed,
        num_train_epochs=1,
        peft_config=VPTNSPConfig(prompt_length=2, eta1=0.5, eta2=0.5, classifier="linear"),
        resume_with_changed_settings=True,
    )
    reference = run(unchanged, num_train_epochs=1)
    assert result.record.settings_changes == [{"task": 1, "changed": {"eta1": [0.97, 0.5], "eta2": [0.97, 0.5]}}]
    assert result.record.settings["eta1"] == 0.97 and result.record.method == "VPT-NSP²"
    assert "from task 1: `eta1` 0.97 → 0.5" in (changed / "tasks" / "task-1" / "README.md").read_text()
    # Task 1 trained with the projectors of task 0's fold (η 0.97 in both); its own fold used η 0.5.
    config, weights = _adapter(changed / "tasks" / "task-1")
    reference_config, reference_weights = _adapter(unchanged / "tasks" / "task-1")
    assert (config["eta1"], config["eta2"], reference_config["eta1"]) == (0.5, 0.5, 0.97)
    assert _adapter(changed / "tasks" / "task-0")[0]["eta1"] == 0.97
    for key, value in weights.items():
        if "prompt_projector" in key or "key_projector" in key:
            assert not torch.equal(value, reference_weights[key]), key
        else:
            torch.testing.assert_close(value, reference_weights[key], rtol=0, atol=1e-6, msg=key)
    assert any(not torch.equal(a, b) for a, b in zip(final_state(result)[1], final_state(reference)[1]))


def test_a_resume_without_the_projection_names_both_methods_in_the_record(tmp_path):
    (folder,) = _killed_copies(tmp_path, ["seq"], task=1)
    result = run(folder, num_train_epochs=1, projection=False, resume_with_changed_settings=True)
    assert result.record.method == "VPT-NSP², then VPT-Seq from task 1"
    sequences = [json.loads((folder / "tasks" / f"task-{t}" / "sequence.json").read_text()) for t in range(3)]
    assert [sequence["method"] for sequence in sequences] == ["VPT-NSP²", *["VPT-NSP², then VPT-Seq from task 1"] * 2]
    assert json.loads((folder / "progress.json").read_text())["method"] == result.record.method


def test_settings_changed_inside_a_task_apply_from_its_beginning(tmp_path, caplog):
    """Killed at step 3 of task 2 (a checkpoint at step 2), resumed with another learning rate and epoch count: task 2
    restarts and ends exactly as when the same change is made after task 1."""
    inside, between = _killed_copies(tmp_path, ["inside", "between"], task=2, step=3)
    assert (inside / "training" / "task-2" / "checkpoint-2").is_dir()
    shutil.rmtree(between / "training")  # the state of a run killed as task 2 began
    change = dict(learning_rate=0.1, num_train_epochs=2, resume_with_changed_settings=True)
    with caplog.at_level(logging.WARNING, logger="peft_nsp.loop.class_incremental"):
        result = run(inside, **change)
    assert "Task 2 restarts from its beginning with the changed settings" in caplog.text
    reference = run(between, **change)
    expected = [{"task": 2, "changed": {"learning_rate": [0.05, 0.1], "num_train_epochs": [1, 2]}}]
    assert result.record.settings_changes == reference.record.settings_changes == expected
    metrics, prompts = final_state(result)
    reference_metrics, reference_prompts = final_state(reference)
    assert metrics == reference_metrics
    for a, b in zip(prompts, reference_prompts, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ the Hub
def test_a_stalled_hub_never_blocks_training_longer_than_the_timeout(tmp_path, caplog):
    """The local Hub takes every request and never answers (`huggingface_hub`'s default client waits forever)."""
    from huggingface_hub import HfApi

    result = run(tmp_path / "run", num_train_epochs=1)
    with LocalHub(tmp_path / "hub").running() as hub:
        hub.faults.append(Fault("create_repo", action="stall", times=10))
        api = HfApi(endpoint=hub.url, token="hf_fake")
        hook = HubStageStore(REPO, api=api, timeout=1.0).publish
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="peft_nsp.hub"):
            hook(tmp_path / "run" / "tasks" / "task-2", 2)
            hook(tmp_path / "run" / "tasks" / "task-2", 2)  # the stalled push still holds its slot: reported
        assert time.perf_counter() - start < 10
        assert "did not finish within 1 s" in caplog.text and "task-0, task-1, task-2" in caplog.text
        assert "The previous push is still running" in caplog.text
        with pytest.raises(HubPushError, match="did not finish within 0.5 s.*python -m peft_nsp.hub push"):
            push_with_deadline(tmp_path / "run", REPO, timeout=0.5, api=api)
        assert hub.calls == [("create_repo", None)] * 2
    assert result.metrics.num_tasks == 3


# ------------------------------------------------------------------------------------------------ one run per folder
def _hold_lock_then_die(path: str, ready) -> None:
    lock = FileLock(path)
    lock.acquire()
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_one_run_per_output_dir_and_a_crashed_run_leaves_no_stuck_lock(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    holder = FileLock(str(tmp_path / ".run.lock"))
    holder.acquire()
    try:
        with pytest.raises(RuntimeError, match=r"Another run is using .* `\.run\.lock`.*killed `accelerate launch`"):
            run(tmp_path)
    finally:
        holder.release()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_hold_lock_then_die, args=(str(tmp_path / ".run.lock"), ready))
    process.start()
    process.join(60)
    assert ready.is_set() and process.exitcode == -signal.SIGKILL
    assert run(tmp_path, num_train_epochs=1).metrics.num_tasks == 3  # the dead run's lock went with it


# ------------------------------------------------------------------------------------------------ damaged files
@pytest.mark.parametrize(
    "damage", ["no-weights", "truncated-weights", "truncated-weights-no-checksums", "truncated-progress"]
)
def test_a_damaged_run_folder_names_the_file_and_the_fix(tmp_path, damage):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, callbacks=[Interrupt(1, 0)])
    weights = tmp_path / "tasks" / "task-0" / "adapter_model.safetensors"
    if damage == "no-weights":
        weights.unlink()
        message = r"The stage `.*task-0` has no `adapter_model.safetensors`.*Restore it"
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:100])
        message = r"The stage `.*task-0` was damaged after it was written: `adapter_model.safetensors` differ"
    elif damage == "truncated-weights-no-checksums":  # a stage written before stages had `.sha256`
        (tmp_path / "tasks" / "task-0" / ".sha256").unlink()
        weights.write_bytes(weights.read_bytes()[:100])
        message = r"Loading the stage `.*task-0` failed.*damaged"
    else:
        progress = tmp_path / "progress.json"
        progress.write_text(progress.read_text()[:50])
        message = r"`.*progress.json` is not valid JSON .*truncated or damaged"
    with pytest.raises(ValueError, match=message):
        run(tmp_path)


def test_a_flipped_bit_in_a_stage_is_found_before_it_is_resumed_or_continued(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", num_train_epochs=1, callbacks=[Interrupt(1, 0)])
    stage = tmp_path / "run" / "tasks" / "task-0"
    weights = stage / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a weight's low bit: the file still loads, with one value changed
    weights.write_bytes(bytes(data))
    load_file(weights)
    message = (
        r"The stage `.*task-0` was damaged after it was written: `adapter_model.safetensors` differ\(s\) from "
        r"the checksum in `.sha256`.*--revision task-0"
    )
    with pytest.raises(ValueError, match=message):
        run(tmp_path / "run", num_train_epochs=1)
    with pytest.raises(ValueError, match=message):
        loop.run_class_incremental(
            tiny_model("vit", seed=2),
            None,
            NSPConfig(output_dir=str(tmp_path / "continued"), report_to="none", use_cpu=True),
            ClassIncrementalConfig(num_tasks=2, continue_from=stage),
            TRAIN,
            TEST,
            train_transform=to_tensor,
        )
    with pytest.raises(ValueError, match=message):
        materialize_stage(stage, tmp_path / "materialized")
