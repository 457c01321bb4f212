# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Nothing silently poisoned, dropped or stuck: non-finite values, loads that do not fit, interrupted checkpoints,
changed settings on resume, a stalled Hub, two runs on one folder, full disks, damaged files."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time

import pytest
import torch
from testing_utils import tiny_config, tiny_model, to_tensor
from filelock import FileLock
from peft import PeftModel, get_peft_model
from test_hub import REPO
from test_loop import TRAIN, Interrupt, final_state, run
from transformers import TrainerCallback, ViTModel

from peft_nsp import VPTNSPConfig
from peft_nsp.hub import HubPushError, push_after_each_task
from peft_nsp.hub.push import push_with_deadline
from peft_nsp.tuner import NonFiniteError

IMAGES = to_tensor([row["image"] for row in TRAIN.select(range(6))])


def folded_model(**config) -> PeftModel:
    model = get_peft_model(tiny_model("vit", seed=2), VPTNSPConfig(prompt_length=2, **config))
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


# ------------------------------------------------------------------------------------------------ changed settings
def test_a_resume_with_changed_settings_is_refused_or_recorded(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, callbacks=[Interrupt(2, 0)])
    with pytest.raises(ValueError, match=r"other settings: `learning_rate`: 0.05 \(run\) → 0.1 \(now\).*"
                                         r"`resume_with_changed_settings=True`"):
        run(tmp_path, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"`eta1`: 0.97 \(run\) → 0.5 \(now\)"):
        run(tmp_path, peft_config=VPTNSPConfig(prompt_length=2, eta1=0.5))
    result = run(tmp_path, learning_rate=0.1, resume_with_changed_settings=True)
    assert result.record.settings_changes == [{"task": 2, "changed": {"learning_rate": [0.05, 0.1]}}]
    assert result.record.settings["learning_rate"] == 0.05  # what the run started with
    card = (tmp_path / "tasks" / "task-2" / "README.md").read_text()
    assert "from task 2: `learning_rate` 0.05 → 0.1" in card


# ------------------------------------------------------------------------------------------------ the Hub
@pytest.fixture
def stalled_endpoint():
    """A local server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    connections = []

    def accept():
        while True:
            try:
                connections.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_stalled_hub_never_blocks_training_longer_than_the_timeout(tmp_path, stalled_endpoint, caplog):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=stalled_endpoint, token="hf_fake")
    result = run(tmp_path, num_train_epochs=1)
    hook = push_after_each_task(REPO, api=api, timeout=1.0)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="peft_nsp.hub"):
        hook(tmp_path / "tasks" / "task-2", 2)
        hook(tmp_path / "tasks" / "task-2", 2)  # the stalled push still holds its slot: reported, not waited for
    assert time.perf_counter() - start < 10
    assert "did not finish within 1 s" in caplog.text and "task-0, task-1, task-2" in caplog.text
    assert "The previous push is still running" in caplog.text
    with pytest.raises(HubPushError, match="did not finish within 0.5 s.*python -m peft_nsp.hub push"):
        push_with_deadline(tmp_path, REPO, timeout=0.5, api=api)
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
@pytest.mark.parametrize("damage", ["no-weights", "truncated-weights", "truncated-progress"])
def test_a_damaged_run_folder_names_the_file_and_the_fix(tmp_path, damage):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, callbacks=[Interrupt(1, 0)])
    weights = tmp_path / "tasks" / "task-0" / "adapter_model.safetensors"
    if damage == "no-weights":
        weights.unlink()
        message = r"The stage `.*task-0` has no `adapter_model.safetensors`.*Restore it"
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:100])
        message = r"Loading the stage `.*task-0` failed .*truncated or damaged"
    else:
        progress = tmp_path / "progress.json"
        progress.write_text(progress.read_text()[:50])
        message = r"`.*progress.json` is not valid JSON .*truncated or damaged"
    with pytest.raises(ValueError, match=message):
        run(tmp_path)
