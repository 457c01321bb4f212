# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Does a long run stay flat? Per task of a 50-task `run_class_incremental` run on a tiny random ViT: the time to
write the stage (and the heat map inside it), the process memory, the size of the stage and of the run folder.

``python benchmarks/growth.py [--tasks 50]`` writes ``results/growth.json`` and prints the table (``report.py`` puts
it in RESULTS.md). ``--smoke``: 4 tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import RESULTS_DIR, facts_line, markdown_table, run_facts, tiny_vit, write_results

import peft_nsp
from peft_nsp.continual.data import processor_transform
from peft_nsp.loop import ClassIncrementalConfig
from peft_nsp.loop import class_incremental as loop
from peft_nsp.offline.datasets import image_dataset
from peft_nsp.trainer import NSPConfig


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


class Timed:
    """Wraps a function of `peft_nsp.loop.class_incremental` and records how long each call took."""

    def __init__(self, name: str) -> None:
        self.name, self.seconds = name, []
        self.function = getattr(loop, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - start)


def measure(num_tasks: int) -> list[dict[str, float]]:
    classes = 2 * num_tasks
    rng = np.random.default_rng(0)
    patterns = rng.uniform(0, 255, (classes, 16, 16))

    def split(per_class: int, seed: int):
        noise = np.random.default_rng(seed)
        labels = np.repeat(np.arange(classes), per_class)
        images = np.clip(patterns[labels] + noise.normal(0, 30, (len(labels), 16, 16)), 0, 255).astype(np.uint8)
        return image_dataset(images, labels, tuple(f"class {c}" for c in range(classes)))

    train, test = split(4, 1), split(2, 2)
    from transformers import ViTImageProcessor

    transform = processor_transform(ViTImageProcessor(size={"height": 16, "width": 16}))
    write_stage, plot = Timed("write_stage"), Timed("plot_accuracy_matrix")
    rows: list[dict[str, float]] = []
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as output_dir, contextlib.ExitStack() as stack:
        output = Path(output_dir)
        stack.enter_context(_patched(loop, "write_stage", write_stage))
        stack.enter_context(_patched(loop, "plot_accuracy_matrix", plot))

        def record(stage: Path, task: int) -> None:
            rows.append(
                {
                    "task": task,
                    "stage_write_s": write_stage.seconds[-1],
                    "heat_map_s": plot.seconds[-1],
                    "rss_mb": process.memory_info().rss / 2**20,
                    "stage_mb": folder_bytes(stage) / 2**20,
                    "run_folder_mb": folder_bytes(output) / 2**20,
                    "training_folder_mb": folder_bytes(output / "training") / 2**20
                    if (output / "training").exists()
                    else 0,
                }
            )

        args = NSPConfig(
            output_dir=output_dir,
            num_train_epochs=1,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=64,
            learning_rate=0.01,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            save_strategy="steps",
            save_steps=1,
            seed=0,
            logging_strategy="no",
        )
        with contextlib.redirect_stdout(io.StringIO()):
            loop.run_class_incremental(
                tiny_vit(16),
                peft_nsp.VPTNSPConfig(prompt_length=2, classifier="linear"),
                args,
                ClassIncrementalConfig(num_tasks=num_tasks),
                train,
                test,
                train_transform=transform,
                on_stage_saved=record,
            )
    return rows


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    shown = [row for row in rows if row["task"] in {0, 1, 4, 9, 19, 29, 39, len(rows) - 1}]
    table = markdown_table(
        [
            "after task",
            "stage write (s)",
            "heat map (s)",
            "RSS (MB)",
            "stage (MB)",
            "run folder (MB)",
            "Trainer checkpoints (MB)",
        ],
        [
            [
                row["task"],
                f"{row['stage_write_s']:.2f}",
                f"{row['heat_map_s']:.2f}",
                f"{row['rss_mb']:.0f}",
                f"{row['stage_mb']:.2f}",
                f"{row['run_folder_mb']:.2f}",
                f"{row['training_folder_mb']:.2f}",
            ]
            for row in shown
        ],
    )
    first, last = rows[1], rows[-1]
    return "\n".join(
        [
            f"## Growth over {len(rows)} tasks (tiny random ViT, 2 classes a task)",
            "",
            facts_line(results["facts"]),
            "",
            "`run_class_incremental` with a Trainer checkpoint every step; measured after each task. Stage write = the "
            "whole stage (adapter, metrics, plots, card) into its folder, then the pointer; the heat map is "
            f"part of it. Ratios after task {last['task']} vs after task 1 (one run): stage write "
            f"{last['stage_write_s'] / first['stage_write_s']:.2f}×, heat map {last['heat_map_s'] / first['heat_map_s']:.2f}×, "
            f"RSS {last['rss_mb'] / first['rss_mb']:.2f}×, stage size {last['stage_mb'] / first['stage_mb']:.2f}×.",
            "",
            table,
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "growth.json")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    results = {"facts": run_facts("cpu"), "rows": measure(4 if args.smoke else args.tasks)}
    write_results(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
