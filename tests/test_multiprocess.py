# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A real 2-process `accelerate launch` on CPU (gloo) against a single-process run.

accelerate 1.15 starts one process for `--cpu --num_processes 2` unless MPI is set up; `--multi_gpu` starts the
processes through torchrun, and `use_cpu=True` in the training arguments makes them a gloo CPU group.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


SCRIPT = Path(__file__).with_name("multiprocess_run.py")


def test_two_processes_hold_identical_projectors_equal_to_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, str(SCRIPT), str(single), "12"], check=True, capture_output=True)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--multi_gpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
        str(SCRIPT),
        str(multi),
        "6",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(multi / f"rank-{r}.pt") for r in (0, 1)]
    reference = torch.load(single / "rank-0.pt")
    for key in ("prompts", "key_projectors", "prompt_projectors", "key_covariances"):
        for a, b in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(a, b), f"{key} differ between ranks"
        for a, b in zip(ranks[0][key], reference[key]):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5, msg=f"{key}: 2 vs 1 process")
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == reference["metrics"]
    # Only the main process wrote the run's files, once.
    assert (multi / "progress.json").exists() and (multi / "tasks" / "task-1" / "adapter_model.safetensors").exists()
