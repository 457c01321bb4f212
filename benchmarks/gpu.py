# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The GPU benchmarks in one short lease (a single H200/H100, bf16, SDPA), under 10 minutes with the installs.

The GPU machine reaches no network and lacks some of our packages, so everything it needs is prepared here first:

    python benchmarks/gpu.py prepare            # here, once: .gpu/ (≈ 55 MB, ignored by git)

writes (``.gpu/`` is in ``.gitignore``; the device tool carries it) ``.gpu/backbone`` (the offline DINOv2-S/14 converted at 224 px, float16 on disk), ``.gpu/data`` (the 30-class
digits/fashion/animals sequence, all 400 training and 100 test images per class) and ``.gpu/wheels`` (datasets,
evaluate, aenum and peft 0.21, which that machine's image lacks or has in another version). Then, on the
GPU machine, from the repository root (the `device` tool's ``run`` with ``carry=[".gpu"]``):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && \\
        PYTHONPATH=/tmp/site:. python3 benchmarks/gpu.py run --output $OUT

which runs (1) `speed.py`: ViT-B/16 at 224 px, batch 256, bf16: images/s, peak memory, projection overhead,
fraction of peak FLOP/s; (2) `forgetting.py` on the 30-class sequence at 224 px with all the data: the rows a user
would pick instead (SimpleCIL, RanPAC, RanPAC with first-task adaptation), VPT-Seq, VPT-NSP², VPT-NSP² + CA,
VPT-NSP² with the analytic head and joint training, seed 2024, bf16. The JSON files land in ``--output``; copy them to
``benchmarks/results/`` and run ``python benchmarks/report.py``. ``run --device cpu --smoke`` checks the whole
path here in a minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FOLDER = ROOT / ".gpu"
#: What the GPU image lacks (its own torch, transformers, accelerate, huggingface_hub, numpy, pyarrow stay).
WHEELS = (
    "datasets==5.2.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "evaluate==0.4.6",
    "aenum==3.1.17",
    "peft==0.21.2",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def prepare(folder: Path) -> None:
    """Backbone, data and wheels for the GPU machine, into ``folder``."""
    import torch
    from transformers import ViTModel

    from peft_nsp.offline import load_digits_fashion_animals, offline_vit_path

    folder.mkdir(parents=True, exist_ok=True)
    converted = offline_vit_path(image_size=224)
    model = ViTModel.from_pretrained(converted, add_pooling_layer=False, dtype=torch.float16)
    model.save_pretrained(folder / "backbone")
    shutil.copy(converted / "preprocessor_config.json", folder / "backbone")
    load_digits_fashion_animals(seed=0).save_to_disk(str(folder / "data" / "digits-fashion-animals"))
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(folder / "wheels"),
            *WHEELS,
        ],
        check=True,
    )
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB)")


def run(folder: Path, output: Path, device: str, smoke: bool) -> None:
    """Both benchmarks, one after the other; their JSON into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-u"]
    speed = (
        ["--model", "tiny", "--image-size", "16", "--batch-size", "8", "--smoke"]
        if smoke
        else ["--model", "vit-b16", "--image-size", "224", "--batch-size", "256", "--dtype", "bf16", "--threads", "16"]
    )
    forgetting = (
        ["--smoke"]
        if smoke
        else [
            "--backbone",
            str(folder / "backbone"),
            "--data-dir",
            str(folder / "data"),
            "--image-size",
            "224",
            "--per-class",
            "0",
            "--test-per-class",
            "0",
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--bf16",
            "--threads",
            "16",
        ]
    )
    steps = [
        [*python, str(HERE / "speed.py"), "--device", device, *speed, "--output", str(output / "speed-gpu.json")],
        [
            *python,
            str(HERE / "forgetting.py"),
            "--device",
            device,
            "--datasets",
            "digits-fashion-animals",
            "--methods",
            "simplecil",
            "ranpac",
            "ranpac-fta",
            "seq",
            "nsp",
            "nsp-ca",
            "nsp-analytic",
            "joint",
            "--seeds",
            "2024",
            "--etas",
            *forgetting,
            "--output",
            str(output / "forgetting-digits-fashion-animals-gpu.json"),
        ],
    ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for command in steps:
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=HERE, env=environment)
        print(f"[{time.perf_counter() - start:.0f} s] {' '.join(command[2:4])}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="here: backbone, data and wheels into --folder")
    prepare_parser.add_argument("--folder", type=Path, default=FOLDER)
    run_parser = commands.add_parser("run", help="on the GPU machine: both benchmarks")
    run_parser.add_argument("--folder", type=Path, default=FOLDER)
    run_parser.add_argument("--output", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    run_parser.add_argument("--device", default="cuda")
    run_parser.add_argument("--smoke", action="store_true", help="tiny models, seconds (checks the path on a CPU)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.folder)
    else:
        run(args.folder, args.output, args.device, args.smoke)


if __name__ == "__main__":
    main()
