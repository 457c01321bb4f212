# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The finished stages of a run's ``output_dir`` and their Hub revision names.

A stage is the folder ``output_dir/tasks/task-<t>`` that [`run_class_incremental`] writes after task ``t``
(tasks counted from 0, as in the accuracy matrix); on the Hub it is the branch of the same name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..continual.loop import PROGRESS_FILE

CARD_FILE = "README.md"
SEQUENCE_FILE = "sequence.json"


def stage_revision(task: int) -> str:
    """``"task-<t>"``: the local stage folder and the Hub branch holding the model after task ``t`` (from 0)."""
    return f"task-{task}"


def finished_stages(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(task, stage_dir)`` of every stage that ``output_dir/progress.json`` names finished and that is on disk.

    A run continued from a single stage (see [`materialize_stage`]) holds no earlier stage folders; they are
    left out. A stage folder beyond the pointer (renamed by a run killed before its pointer moved) is not
    finished and is left out too.
    """
    output_dir = Path(output_dir)
    progress = output_dir / PROGRESS_FILE
    if not progress.is_file():
        raise ValueError(f"`{output_dir}` has no `{PROGRESS_FILE}`: no task of a run has finished there.")
    finished = json.loads(progress.read_text())["finished_tasks"]
    stages = [(task, output_dir / "tasks" / stage_revision(task)) for task in range(finished)]
    return [(task, stage) for task, stage in stages if (stage / SEQUENCE_FILE).is_file()]


def read_sequence(stage_dir: str | os.PathLike) -> dict[str, Any]:
    """The stage's ``sequence.json``: tasks, class names, seed, hyperparameters, run info, metrics."""
    return json.loads((Path(stage_dir) / SEQUENCE_FILE).read_text())


def stage_files(stage_dir: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the stage's files (hidden files, e.g. temporary ones, left out), sorted."""
    stage_dir = Path(stage_dir)
    paths = (path.relative_to(stage_dir) for path in stage_dir.rglob("*") if path.is_file())
    return sorted(path.as_posix() for path in paths if not any(part.startswith(".") for part in path.parts))


def stage_digest(stage_dir: str | os.PathLike) -> str:
    """SHA-256 over the stage's file names and contents, model card excepted (it is re-rendered per repo)."""
    digest = hashlib.sha256()
    for name in stage_files(stage_dir):
        if name != CARD_FILE:
            digest.update(f"{name}\0{_file_sha256(Path(stage_dir) / name)}\0".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
