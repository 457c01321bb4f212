# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The files of a Hugging Face Space that runs the demo on a published repository: ``app.py``, ``requirements.txt``
and the Space's ``README.md`` (its YAML header: Gradio SDK, the model it shows)."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from .. import __version__
from .._io import write_atomically


APP = """\
# A Space for the continually trained model `{source}`, written by `python -m peft_nsp.demo space`.
# Gradio serves it on the address the Space sets (GRADIO_SERVER_NAME), on 127.0.0.1 anywhere else.
import peft_nsp  # noqa: F401  registers the `vpt_nsp` method with PEFT before any adapter loads
from peft_nsp.demo import build_demo, launch


demo = build_demo({source!r}, teach_dir="taught")

if __name__ == "__main__":
    launch(demo, server_name=None)
"""

README = """\
---
title: {title}
emoji: 🧠
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio}
app_file: app.py
models:
- {source}
tags:
- peft-nsp
- continual-learning
---

The continually trained model [`{source}`](https://huggingface.co/{source}) in the browser: its accuracy matrix, the
classes of every `task-<t>` revision, any two revisions classifying the same image, and a new task taught on the
Space's CPU (written to the Space's disk, not to the model repository).
"""


def write_space(source: str, output: str | os.PathLike, package: str | None = None) -> list[Path]:
    """Write ``app.py``, ``requirements.txt`` and ``README.md`` of a Space showing ``source`` into ``output``.

    Args:
        source: the model repository (``user/repo``, or ``user/repo@task-<t>``), or a local run or stage folder
            (to run the app on this machine).
        output: the Space's folder (created).
        package: the pip requirement that installs peft-nsp with the demo extra (default:
            ``peft-nsp[demo,offline]==<this version>``; e.g. ``peft-nsp[demo,offline] @ git+https://…``).

    Returns:
        The written files.
    """
    if not str(source).strip():
        raise ValueError("Give the model repository the Space shows, e.g. `user/vpt-nsp-mnist`.")
    output = Path(output)
    package = package or f"peft-nsp[demo,offline]=={__version__}"
    repo = str(source).split("@", 1)[0]
    files = {
        "app.py": APP.format(source=str(source)),
        "requirements.txt": f"{package}\n",
        "README.md": README.format(title=repo.rsplit("/", 1)[-1][:30], gradio=gr.__version__, source=repo),
    }
    return [write_atomically(output / name, text.encode()) for name, text in files.items()]
