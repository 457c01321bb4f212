# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Continue a run from a stage on the Hub (a ``task-<t>`` revision) or in a local folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi

from ..continual.stages import PROGRESS_FILE, SEQUENCE_FILE, read_record, stage_files, verify_stage, write_stage
from .store import HubStageStore


def materialize_stage(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    api: HfApi | None = None,
) -> Path:
    """Make ``output_dir`` a run that [`run_class_incremental`] resumes after the stage ``source``.

    The stage's files go to ``output_dir/tasks/task-<t>/`` and its ``sequence.json`` becomes
    ``output_dir/progress.json``, exactly as the loop leaves them after task ``t``. Calling
    ``run_class_incremental`` with ``args.output_dir=output_dir`` and the same task split (``num_tasks`` and the
    stage's class order) then trains task ``t + 1`` on with the stage's prompts, heads and projectors.

    Args:
        source: a local stage folder (``.../tasks/task-<t>``), or a Hub model id.
        output_dir: the new run's folder; must not hold a run yet.
        revision: the Hub revision, e.g. ``"task-3"`` for the model after task 3 (tasks counted from 0).
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login.
        api: the [`~huggingface_hub.HfApi`] to download with (default: ``HfApi(token=token)``).

    Returns:
        The new stage folder.
    """
    output_dir = Path(output_dir)
    if (output_dir / PROGRESS_FILE).exists():
        raise ValueError(f"`{output_dir}` already holds a run (`{PROGRESS_FILE}`); choose a new `output_dir`.")
    if Path(source).is_dir():
        if revision is not None:
            raise ValueError(f"`revision` is for Hub repositories; `{source}` is a local folder.")
        folder = Path(source)
    else:
        folder = HubStageStore(token=token, api=api).fetch(str(source), revision)
    verify_stage(folder)  # what the Hub gave is checked against the stage's own checksums, as a local stage
    record = read_record(folder)

    def copy_files(partial: Path) -> None:  # the stage's own files; hidden ones (.gitattributes, .cache) stay behind
        for name in stage_files(folder):
            if name != SEQUENCE_FILE:
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / name, partial / name)

    return write_stage(output_dir, record.finished_tasks - 1, record, copy_files)
