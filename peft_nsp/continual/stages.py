# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The run on disk: its layout, its record, and [`StageStore`], the interface to a store stages are published to and
read back from (the Hub: `peft_nsp.hub.HubStageStore`).

Layout of a run's ``output_dir`` (only the main process writes)::

    output_dir/
      progress.json         # the run record of the last finished stage, replaced atomically (the pointer)
      .run.lock             # held while a run uses the folder
      tasks/task-<t>/       # a stage: the model after task t (adapter + projector state, image processor,
                            #   sequence.json (the run record), metrics.json, plots, README.md model card,
                            #   .sha256: the SHA-256 of each file but the card, checked when the stage is read back)
      training/task-<t>/    # Trainer checkpoints while task t trains; removed once its stage is on disk

``task-<t>`` (tasks counted from 0, as in the accuracy matrix) is also the Hub branch of the stage. This module
imports only the standard library and ``peft_nsp._io``: the Hub code and the card read it without loading torch's
training stack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._io import fsync_tree, write_atomically


logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
SEQUENCE_FILE = "sequence.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
MATRIX_PLOT = "accuracy_matrix.png"
CURVE_PLOT = "accuracy_curve.png"
LOCK_FILE = ".run.lock"
CHECKSUM_FILE = ".sha256"
TASKS_DIR = "tasks"
TRAINING_DIR = "training"


def method_name(
    projection: bool = True, joint: bool = False, classifier: str = "linear", classifier_alignment: bool = False
) -> str:
    """The one name of a training variant: ``VPT-NSP²``, ``VPT-Seq``, ``CLIP-NSP²``, ``CLIP-Seq`` (+ `` + CA`` with
    classifier alignment, + `` + analytic head`` with the analytic head), or ``Upper bound (joint)``."""
    if joint:
        return "Upper bound (joint)"
    family = "CLIP" if classifier == "text" else "VPT"
    name = f"{family}-NSP²" if projection else f"{family}-Seq"
    if classifier == "analytic":
        return f"{name} + analytic head"
    # CLIP-NSP² aligns its classifier after every task by definition (the paper's method).
    return f"{name} + CA" if classifier_alignment and family == "VPT" else name


class StageStore(Protocol):
    """Where a run's stages are published after each task and read back from to continue them.

    `run_class_incremental(..., stage_store=...)` calls [`publish`] once a stage is on disk and [`fetch`] for a
    ``continue_from`` that is not a local folder; `peft_nsp.hub.HubStageStore` is the Hub's.
    """

    def publish(self, stage: Path, task: int) -> None:
        """Publish the stage folder ``stage`` (the model after task ``task``) and any earlier one not published."""

    def fetch(self, name: str, revision: str | None = None) -> Path:
        """A local folder holding the files of the stage ``name`` at ``revision`` (e.g. ``"task-3"``)."""


def stage_revision(task: int) -> str:
    """``"task-<t>"``: the local stage folder and the Hub branch holding the model after task ``t`` (from 0)."""
    return f"task-{task}"


def stage_dir(output_dir: str | os.PathLike, task: int) -> Path:
    """``output_dir/tasks/task-<t>``."""
    return Path(output_dir) / TASKS_DIR / stage_revision(task)


def run_dir_of_stage(stage: str | os.PathLike) -> Path:
    """The ``output_dir`` a stage folder belongs to (the inverse of [`stage_dir`])."""
    stage = Path(stage)
    if stage.parent.name != TASKS_DIR:
        raise ValueError(f"`{stage}` is not a stage folder (`<output_dir>/{TASKS_DIR}/task-<t>`).")
    return stage.parent.parent


def training_dir(output_dir: str | os.PathLike, task: int) -> Path:
    """``output_dir/training/task-<t>``: the Trainer checkpoints of task ``t``."""
    return Path(output_dir) / TRAINING_DIR / stage_revision(task)


@dataclass
class RunRecord:
    """What a run is and how far it got; ``sequence.json`` of every stage and the run's ``progress.json``.

    Class ids are the model's: the classes of task 0 are ids ``0 … n₀−1`` and so on, so ``class_names[i]`` names
    logit column ``i``.
    """

    tasks: list[list[str]]
    """The class names of every task of the run, in training order (its whole planned sequence)."""
    seed: int
    method: str
    """See [`method_name`]."""
    finished_tasks: int = 0
    joint: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    """Training and adapter settings (`NSPConfig.recorded_settings()` and the adapter's), as the run started."""
    settings_changes: list[dict[str, Any]] = field(default_factory=list)
    """``{"task": t, "changed": {name: [old, new]}}`` for every resume allowed to change settings."""
    run_info: dict[str, Any] = field(default_factory=dict)
    """Facts the caller records (benchmark, dataset, base model, ...); the model card reads them."""
    metrics: dict[str, Any] = field(default_factory=lambda: {"correct": [], "total": []})
    """`ContinualMetrics.to_dict()` of the finished tasks."""
    continued_from: str | None = None
    """The adapter this run continued (a stage folder or ``repo@revision``), if any."""

    @property
    def class_names(self) -> list[str]:
        """The name of every class id (logit column)."""
        return [name for task in self.tasks for name in task]

    @property
    def class_ids(self) -> list[list[int]]:
        """The class ids of every task."""
        return task_class_ids(self.tasks)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike = "run record") -> RunRecord:
        """Parse a record; also reads the `sequence.json` of peft-nsp 0.1 (tasks as dataset class ids)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"`{source}` is not valid JSON ({error}): the file is truncated or damaged. Restore it from the stage "
                "folder's `sequence.json`, or start a new `output_dir`."
            ) from error
        if "hyperparameters" in data:  # peft-nsp 0.1
            names = data["class_names"]
            data = {
                "tasks": [[names[c] for c in task] for task in data["tasks"]],
                "seed": data["seed"],
                "method": data.get("run_info", {}).get("method")
                or method_name(data.get("projection", True), data.get("joint", False)),
                "finished_tasks": data["finished_tasks"],
                "joint": data.get("joint", False),
                "settings": data["hyperparameters"],
                "run_info": data.get("run_info", {}),
                "metrics": data["metrics"],
            }
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def task_class_ids(tasks: list[list[str]]) -> list[list[int]]:
    """The model's class ids of tasks given by their class names: consecutive, in task order."""
    ids, start = [], 0
    for task in tasks:
        ids.append(list(range(start, start + len(task))))
        start += len(task)
    return ids


def read_record(path: str | os.PathLike) -> RunRecord:
    """The record in a stage folder (its ``sequence.json``) or a file."""
    path = Path(path)
    if path.is_dir():
        path = path / SEQUENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No run record at `{path}`: this folder is not a stage of a peft-nsp run.")
    return RunRecord.from_json(path.read_text(encoding="utf-8"), path)


def read_progress(output_dir: str | os.PathLike) -> RunRecord | None:
    """The record of the last finished stage of the run in ``output_dir``; ``None`` when no task finished."""
    path = Path(output_dir) / PROGRESS_FILE
    return read_record(path) if path.exists() else None


def finished_stages(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(task, stage_dir)`` of every stage that ``progress.json`` names finished and that is on disk.

    A run continued from one stage holds no earlier stage folders; a stage folder beyond the pointer (renamed by a
    run killed before its pointer moved) is not finished. Both are left out.
    """
    record = read_progress(output_dir)
    if record is None:
        raise ValueError(f"`{output_dir}` has no `{PROGRESS_FILE}`: no task of a run has finished there.")
    stages = [(task, stage_dir(output_dir, task)) for task in range(record.finished_tasks)]
    return [(task, stage) for task, stage in stages if (stage / SEQUENCE_FILE).is_file()]


def write_stage(
    output_dir: str | os.PathLike, task: int, record: RunRecord, write_files: Callable[[Path], None]
) -> Path:
    """Publish the stage of ``task``: the only way a stage reaches disk.

    The record goes into a temporary folder as ``sequence.json``, then ``write_files(folder)`` writes the stage's
    other files there (they may read the record) and ``.sha256`` lists their checksums ([`verify_stage`]); the
    folder is flushed to disk, renamed into place, and only then ``progress.json`` (the pointer) is replaced. A crash
    at any point leaves the previous stage and pointer intact; a failed write removes the temporary folder.
    """
    final = stage_dir(output_dir, task)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write_atomically(partial / SEQUENCE_FILE, record.to_json().encode())
        write_files(partial)
        checksums = "".join(f"{sha}  {name}\n" for name, sha in _file_checksums(partial).items())
        write_atomically(partial / CHECKSUM_FILE, checksums.encode())  # `sha256sum -c .sha256` reads it too
        fsync_tree(partial)  # the pointer below must never name a stage whose files are not on disk
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # frees the space a full disk needs back
        raise
    shutil.rmtree(final, ignore_errors=True)  # a stage renamed by a run killed before its pointer moved
    os.replace(partial, final)
    write_atomically(Path(output_dir) / PROGRESS_FILE, record.to_json().encode())
    return final


def stage_files(folder: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of a stage's files (hidden files, e.g. temporary ones, left out), sorted."""
    folder = Path(folder)
    paths = (path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    return sorted(path.as_posix() for path in paths if not any(part.startswith(".") for part in path.parts))


def stage_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over the stage's file names and contents, model card excepted (it is rendered per repository)."""
    digest = hashlib.sha256()
    for name, sha in _file_checksums(folder).items():
        digest.update(f"{name}\0{sha}\0".encode())
    return digest.hexdigest()


def verify_stage(folder: str | os.PathLike) -> None:
    """Raise if a file of the stage differs from the checksum [`write_stage`] recorded in its ``.sha256``.

    Run before a stage is resumed, continued or copied, so a flipped bit on disk is found before it is trained on. A
    stage without ``.sha256`` (written before stages had one) is not checked.
    """
    folder = Path(folder)
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        return
    entries = [line.split("  ", 1) for line in listing.read_text(encoding="utf-8", errors="replace").splitlines()]
    recorded = {entry[1]: entry[0] for entry in entries if len(entry) == 2}
    damaged = [CHECKSUM_FILE] if len(recorded) != len(entries) else []
    damaged += [
        name for name, sha in recorded.items() if not (folder / name).is_file() or _file_sha256(folder / name) != sha
    ]
    if damaged:
        raise ValueError(
            f"The stage `{folder}` was damaged after it was written: {', '.join(f'`{n}`' for n in damaged)} "
            f"differ(s) from the checksum in `{CHECKSUM_FILE}` (storage corruption or an edit). Restore the stage "
            f"(its Hub revision: `python -m peft_nsp.hub materialize <repo> <new output_dir> --revision "
            f"{folder.name}`, or a copy) or start a new `output_dir`."
        )


def _file_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """``{name: sha256}`` of the stage's files but the model card, by name."""
    return {name: _file_sha256(Path(folder) / name) for name in stage_files(folder) if name != CARD_FILE}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def last_complete_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest Trainer checkpoint in ``folder`` that was written completely; incomplete ones are removed.

    transformers writes ``checkpoint-<step>/`` in place and its ``trainer_state.json`` last, so a checkpoint whose
    state file is missing or not valid JSON (a kill, Ctrl-C or full disk while saving) cannot be resumed: it is
    removed with a warning, and the next newest is tried.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    checkpoints = sorted(
        (
            path
            for path in folder.iterdir()
            if path.is_dir()
            and path.name.startswith("checkpoint-")
            and path.name.removeprefix("checkpoint-").isdigit()
        ),
        key=lambda path: int(path.name.removeprefix("checkpoint-")),
        reverse=True,
    )
    for checkpoint in checkpoints:
        if _complete(checkpoint):
            return checkpoint
        logger.warning("Removing the incomplete checkpoint `%s` (interrupted while it was written).", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any((checkpoint / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin"))
