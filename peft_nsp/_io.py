# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory, so readers see the old or the new file.

    Parent directories are created. The temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # 0o666 minus the umask, like a plain `open(path, "wb")`.
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def fsync_tree(directory: str | os.PathLike) -> None:
    """Flush every file below ``directory``, and the directories themselves, to disk (before a rename)."""
    if os.name != "posix":
        return
    for root, _, files in os.walk(directory):
        for name in [*files, "."]:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
