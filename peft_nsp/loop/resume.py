# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""What resuming or continuing a run reads and checks: the stage to start from, the settings the run recorded
(changed only where a change can take effect), the folder's lock and leftover checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout
from peft import PeftModel
from transformers import PreTrainedModel

from ..continual.stages import LOCK_FILE, RunRecord, StageStore, method_name, read_record, training_dir, verify_stage
from ..trainer import NSPConfig
from ..tuner.config import VPTNSPConfig


logger = logging.getLogger(__name__)

#: The adapter settings of the null-space fold at the end of a task (η and the thresholds).
_FOLD_SETTINGS = (
    "threshold_mode",
    "threshold_offset1",
    "threshold_offset2",
    "times_factor1",
    "times_factor2",
    "eta1",
    "eta2",
)
#: Adapter settings recorded with the run.
_ADAPTER_SETTINGS = (
    "prompt_length",
    "prompt_layers",
    "prompt_init",
    *_FOLD_SETTINGS,
    "task_weighting",
    "projected_layers",
    "head_init",
    "classifier",
    "text_templates",
    "class_statistics",
    "analytic_projection_size",
    "analytic_ridge",
    "analytic_ridge_grid",
    "analytic_seed",
)
#: Training settings that shaped what the stage holds: the heads' logits are their outputs divided by the temperature.
_FIXED_TRAINING_SETTINGS = ("temperature",)
#: Adapter settings the tuner reads again for every task, so a resume may change them: η and the thresholds (the
#: null-space fold at the end of a task), `projected_layers` (its training), `head_init`/`text_templates` (its head).
#: The others shaped the prompts, statistics or heads the stage already holds.
_CHANGEABLE_ADAPTER_SETTINGS = (
    *_FOLD_SETTINGS,
    "projected_layers",
    "head_init",
    "text_templates",
)


def load_stage(base_model: PreTrainedModel, folder: Path) -> PeftModel:
    """The trainable model of a stage folder, checked against its checksums, with errors that name it."""
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (Path(folder) / name).is_file():
            raise ValueError(
                f"The stage `{folder}` has no `{name}`: it was damaged after it was written. Restore it (e.g. "
                f"`python -m peft_nsp.hub materialize <repo> <new output_dir> --revision {Path(folder).name}`) "
                "or start a new `output_dir`."
            )
    verify_stage(folder)
    try:
        return PeftModel.from_pretrained(base_model, str(folder), is_trainable=True)
    except ValueError as error:  # ours (the adapter does not fit) or PEFT's: already about this adapter
        raise ValueError(f"Loading the stage `{folder}` failed: {error}") from error
    except Exception as error:
        raise ValueError(
            f"Loading the stage `{folder}` failed ({type(error).__name__}: {error}): a file there is truncated or "
            "damaged. Restore the stage (its Hub revision, or a copy) or start a new `output_dir`."
        ) from error


def load_source(
    base_model: PreTrainedModel, source: str, store: StageStore | None = None
) -> tuple[PeftModel, RunRecord]:
    """The adapter to continue and its run record: a stage folder, or ``name@revision`` fetched from ``store``
    (default: the Hub), checked like a local stage before it is loaded."""
    path, revision = source, None
    if not os.path.isdir(path) and "@" in path:
        path, revision = path.rsplit("@", 1)
    if not os.path.isdir(path):
        if store is None:
            from ..hub.store import HubStageStore

            store = HubStageStore()
        path = store.fetch(path, revision)
    model = load_stage(base_model, Path(path))
    record = read_record(path)
    tuner = model.base_model
    record = dataclasses.replace(record, tasks=record.tasks[: record.finished_tasks])
    if record.class_names != tuner.class_names():
        raise ValueError(
            f"`{source}`: its run record ({record.finished_tasks} tasks, classes {record.class_names[:6]}…) does not "
            f"describe its adapter ({tuner.num_tasks} tasks, {tuner.class_names()[:6]}…); continue a complete stage "
            "folder or Hub revision."
        )
    return model, record


def recorded_settings(args: NSPConfig, peft_config: VPTNSPConfig) -> dict[str, Any]:
    values = {**args.recorded_settings(), **{name: getattr(peft_config, name) for name in _ADAPTER_SETTINGS}}
    return {key: (list(value) if isinstance(value, (list, tuple, set)) else value) for key, value in values.items()}


def current_settings(record: RunRecord) -> dict[str, Any]:
    """The settings in effect at the end of the record: those the run started with, updated by every change."""
    current = {**record.settings}
    for change in record.settings_changes:
        current.update({name: values[1] for name, values in change["changed"].items()})
    return current


def check_settings(
    record: RunRecord, settings: dict[str, Any], args: NSPConfig, output_dir: Path
) -> tuple[RunRecord, dict[str, list[Any]]]:
    """Refuse a resume whose settings differ from the run's, or record the change when it is allowed.

    Returns the record and the changes (``{name: [old, new]}``), which apply from task ``record.finished_tasks``.
    """
    current = current_settings(record)
    changed = {name: [current.get(name), value] for name, value in settings.items() if current.get(name) != value}
    if not changed:
        return record, changed
    listed = "; ".join(f"`{name}`: {old!r} (run) → {new!r} (now)" for name, (old, new) in changed.items())
    task = record.finished_tasks
    fixed = [
        name
        for name in changed
        if name in _FIXED_TRAINING_SETTINGS or (name in _ADAPTER_SETTINGS and name not in _CHANGEABLE_ADAPTER_SETTINGS)
    ]
    if fixed:
        raise ValueError(
            f"`{output_dir}` holds a run with other settings: {listed}. {', '.join(f'`{n}`' for n in fixed)} cannot "
            "change on resume: the stage's prompts, null-space statistics and heads were built with the run's value. "
            "Resume with the run's value, or start a new `output_dir`."
        )
    if not args.resume_with_changed_settings:
        raise ValueError(
            f"`{output_dir}` holds a run with other settings: {listed}. Resume it with the same settings, start a new "
            f"`output_dir`, or pass `resume_with_changed_settings=True` to apply the new ones from task {task} on "
            "(recorded per task in the run record and the model card)."
        )
    logger.warning("Resuming %s with settings changed from task %d (recorded): %s", output_dir, task, listed)
    changes = [*record.settings_changes, {"task": task, "changed": changed}]
    return dataclasses.replace(record, settings_changes=changes), changed


def apply_adapter_changes(config: VPTNSPConfig, changed: dict[str, list[Any]]) -> None:
    """Set the changed adapter settings on the resumed adapter's config, which the next tasks read (and save)."""
    for name, (_, value) in changed.items():
        if name in _CHANGEABLE_ADAPTER_SETTINGS:
            setattr(config, name, value)


def method_of(settings: dict[str, Any], joint: bool) -> str:
    """[`method_name`] of recorded settings (a record of peft-nsp 0.1 may lack some: their defaults)."""
    return method_name(
        settings.get("projection", True),
        joint,
        settings.get("classifier", "linear"),
        settings.get("classifier_alignment", False),
    )


def remove_stale_checkpoints(output_dir: Path, start: int, restart: bool) -> None:
    """Remove the checkpoints of finished tasks (a run killed before it removed them) and, when ``restart`` (the
    settings changed), those of task ``start``: the task then runs from its beginning with the new settings."""
    for task in range(start + 1 if restart else start):
        folder = training_dir(output_dir, task)
        if folder.exists():
            if task == start:
                logger.warning(
                    "Task %d restarts from its beginning with the changed settings; removing `%s`.", task, folder
                )
            shutil.rmtree(folder)


def lock_run(output_dir: Path, state: PartialState) -> FileLock | None:
    """Hold ``output_dir/.run.lock`` for the run (an OS file lock: a crashed run never leaves it stuck)."""
    lock, failure = None, None
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(output_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            lock, failure = (
                None,
                (
                    f"Another run is using `{output_dir}` (it holds `{LOCK_FILE}`). Wait for it to finish or stop it (a "
                    "killed `accelerate launch` can leave its worker processes running: check with `ps`), or use another "
                    "`output_dir`."
                ),
            )
    failure = broadcast_object_list([failure])[0]
    if failure is not None:
        raise RuntimeError(failure)
    return lock
