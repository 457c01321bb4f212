# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The README's continual workflow runs as a new user would run it: its own code, the real offline backbone, real
named classes, in a fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
    """The first ```python block after ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_continual_workflow_section_runs_and_names_the_classes(tmp_path):
    """With only what the README's two set-up commands install (Animal-MNIST, the offline backbone)."""
    code = section_code("## The continual workflow")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation, answer = done.stdout.strip().splitlines()[-2:]
    assert "'eval_accuracy_task_0'" in evaluation and "'eval_accuracy_task_1'" in evaluation
    names = {"Bear", "Bird", "Cat", "Horse", "Sheep", "Zebra"}
    assert any(f"'label': '{name}'" in answer for name in names), answer
    for stage in ("task-0", "task-1"):  # clean stages: the adapter and what loads it, no Trainer checkpoints
        files = {path.name for path in (tmp_path / "zoo" / stage).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "preprocessor_config.json", "README.md"} <= files
        assert not any(path.is_dir() for path in (tmp_path / "zoo" / stage).iterdir()), files
