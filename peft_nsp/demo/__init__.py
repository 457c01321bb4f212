# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A browser demo of a continually trained model (``pip install -e ".[demo]"``)::

    python -m peft_nsp.demo runs/quickstart/nsp               # a run, a stage folder, or user/repo[@task-<t>]
    python -m peft_nsp.demo space user/repo --output space/  # app.py + requirements.txt for a Hub Space

The app shows the run (accuracy heat map, per-task curves, the classes of every revision), classifies an image with
any two revisions side by side, and teaches a new task in the browser. [`DemoRun`] and [`teach`] work without
gradio; [`build_demo`] and [`write_space`] are loaded on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports


#: Public name → the module that defines it.
_EXPORTS = {
    "build_demo": "app",
    "launch": "app",
    "DemoRun": "run",
    "write_space": "space",
    "Lesson": "teaching",
    "TeachingCancelled": "teaching",
    "bundled_task": "teaching",
    "teach": "teaching",
    "uploaded_task": "teaching",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
