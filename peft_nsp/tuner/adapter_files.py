# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Checks of an adapter's files before PEFT reads them, so a damaged file is named with the way out."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


WEIGHTS_FILE = "adapter_model.safetensors"


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise a `ValueError` naming ``path`` when it is not a complete safetensors file.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving every tensor's byte range,
    then the data: the file must be exactly as long as the header says (a truncated or half-written file is not).
    """
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            problem = f"it is {size} bytes long, shorter than a safetensors header"
        else:
            (header_size,) = struct.unpack("<Q", prefix)
            if 8 + header_size > size:
                problem = f"its header says {header_size} bytes of metadata but the file has {size - 8}"
            else:
                try:
                    header = json.loads(file.read(header_size))
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    problem = f"its metadata is not valid JSON ({error})"
                else:
                    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
                    expected = 8 + header_size + max(ends, default=0)
                    if expected != size:
                        problem = f"it is {size} bytes long, but its tensors need {expected}"
    if problem is not None:
        raise ValueError(
            f"The adapter weights `{path}` are damaged: {problem} (a truncated or half-written file). Restore the "
            "folder from its source (the Hub revision it came from, or the run's stage folder), or re-save the model."
        )
