# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The analytic head's size, precision and cost, measured on the frozen offline backbone's features.

On the 30-class digits/fashion/animals sequence (the forgetting benchmark's data and class orders, DINOv2-S/14 at
56 px), for every random-projection size M: the class-incremental accuracy of the analytic head on frozen CLS
features (validation and test split, mean of the seeds), the time of one task's fit (λ selection + solve), and the
adapter bytes it adds per adapter (``R``: F × M float32, ``G``: packed M(M+1)/2 float32) and per class (``Q`` float64
and ``W`` float32 columns, M each). Precision: the same run with ``G`` kept in float64 instead of a packed float32
(what the adapter stores): the largest change of a ridge output and of the accuracy.

Run ``python benchmarks/analytic_head.py`` (minutes on 2 CPU cores); ``--smoke`` uses a tiny random ViT.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    facts_line,
    greyscale_transform,
    markdown_table,
    mean_std,
    run_facts,
    tiny_vit,
    write_results,
)
from forgetting import NUM_TASKS, Settings, cls_features, load_splits, pixels

from peft_nsp.continual import split_classes
from peft_nsp.tuner.analytic_head import AnalyticClassifier, holdout_mask, random_relu_features, ridge_solution
from peft_nsp.tuner.class_statistics import unpack_symmetric


DATASET = "digits-fashion-animals"


def incremental_run(
    features: dict[str, tuple[torch.Tensor, torch.Tensor]], tasks: list[list[int]], projection_size: int, seed: int
) -> dict[str, Any]:
    """Class-incremental analytic head over ``tasks``: final accuracies and fit seconds; and the same sums with `G`
    rounded to float32 after every task (the storage we did not choose): its accuracy and whether it still solves."""
    train_x, train_y = features["train"]
    head = AnalyticClassifier(train_x.shape[1], projection_size, seed=seed).eval()
    gram32 = torch.zeros(head.width, head.width, dtype=torch.float64)
    order, seconds = [], []
    for classes in tasks:
        mask = torch.isin(train_y, torch.tensor(classes))
        columns = torch.tensor([classes.index(int(c)) for c in train_y[mask]])
        head.add_task(len(classes))
        start = time.perf_counter()
        head.fit_task(train_x[mask], columns, holdout_mask(torch.arange(len(columns))))
        seconds.append(time.perf_counter() - start)
        order += classes
        h = random_relu_features(train_x[mask], head.state.projection).double()
        gram32 = (gram32 + h.T @ h).float().double()
    targets = torch.cat([task.targets for task in head.tasks], dim=1)
    try:
        weights32 = ridge_solution(gram32, targets, float(head.state.ridge))
    except ValueError:
        weights32 = None  # the float32-rounded G is not positive definite at the chosen λ
    result = {
        "seconds_per_fit": float(np.mean(seconds)),
        "ridge": float(head.state.ridge),
        "float32_solvable": weights32 is not None,
    }
    for split, (x, y) in features.items():
        if split == "train":
            continue
        outputs = head.ridge_outputs(x).double()
        truth = torch.tensor([order.index(int(c)) for c in y])
        result[split] = float((outputs.argmax(-1) == truth).double().mean())
        if weights32 is not None:
            outputs32 = random_relu_features(x, head.state.projection).double() @ weights32
            result[f"{split}_float32"] = float((outputs32.argmax(-1) == truth).double().mean())
            result[f"{split}_max_output_change"] = float((outputs32 - outputs).abs().max() / outputs.abs().max())
    exact = unpack_symmetric(head.state.gram, head.width)
    result["gram_rounding"] = float((gram32 - exact).abs().max() / exact.abs().max())
    return result


def adapter_bytes(in_features: int, projection_size: int) -> dict[str, int]:
    """``R`` (F × M float32) and the packed float64 ``G`` per adapter; ``Q`` (float64) and ``W`` (float32) columns."""
    width = projection_size or in_features
    return {
        "per_adapter": 4 * in_features * projection_size + 8 * width * (width + 1) // 2,
        "per_class": (8 + 4) * width,
    }


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for size, runs in results["sizes"].items():
        memory = adapter_bytes(results["in_features"], int(size))
        solvable = [r for r in runs if r["float32_solvable"]]
        rows.append(
            [
                size if int(size) else f"0 (features, F = {results['in_features']})",
                mean_std([r["validation"] for r in runs], 100),
                mean_std([r["test"] for r in runs], 100),
                f"{len(solvable)} of {len(runs)}",
                mean_std([r["test_float32"] - r["test"] for r in solvable], 100) if solvable else "n/a",
                mean_std([r["seconds_per_fit"] for r in runs], 1, 2),
                f"{memory['per_adapter'] / 2**20:.1f} MiB",
                f"{memory['per_class'] / 2**10:.1f} KiB",
            ]
        )
    return "\n".join(
        [
            "## The analytic head: projection size, precision, cost (frozen features)",
            "",
            facts_line(results["facts"]),
            "",
            f"30-class digits/fashion/animals sequence, 6 tasks, frozen DINOv2-S/14 CLS features at "
            f"{results['image_size']} px, seeds {results['seeds']} (class orders and the projection's seed); λ chosen "
            "per task on every fifth training sample. Accuracy after the last task over all 30 classes (%). The adapter "
            "stores `G` packed in float64; the float32 columns redo the run with `G` rounded to float32 after every "
            "task (half the bytes): whether `G + λI` still solves at the chosen λ, and the accuracy change when it does.",
            "",
            markdown_table(
                [
                    "M",
                    "validation",
                    "test",
                    "float32 G solvable",
                    "float32 G − float64 (test)",
                    "s per task fit",
                    "adapter: R + G",
                    "per class: Q + W",
                ],
                rows,
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[0, 1000, 2000, 5000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2024, 2025, 2026])
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS_DIR / "analytic-head.json"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.sizes, args.seeds, args.image_size = [0, 64], args.seeds[:1], 16
    settings = Settings(
        args.image_size,
        10 if args.smoke else 100,
        4 if args.smoke else 50,
        0.1,
        3,
        20,
        0.01,
        1.0,
        tuple(args.seeds),
        "",
        False,
        False,
    )
    data = load_splits(DATASET, settings, args.smoke)
    if args.smoke:
        backbone = tiny_vit(image_size=args.image_size)
    else:
        from peft_nsp.offline import load_offline_vit

        backbone = load_offline_vit(image_size=args.image_size, attn_implementation="sdpa")
    transform = greyscale_transform(args.image_size)
    features = {
        name: (cls_features(backbone, pixels(split, transform)[0], "cpu"), torch.tensor(split["label"]))
        for name, split in data.items()
    }
    num_classes = len(data["train"].features["label"].names)
    results = {
        "facts": run_facts("cpu"),
        "image_size": args.image_size,
        "seeds": args.seeds,
        "in_features": int(features["train"][0].shape[1]),
        "sizes": {},
    }
    for size in args.sizes:
        runs = []
        for seed in args.seeds:
            runs.append(incremental_run(features, split_classes(num_classes, NUM_TASKS[DATASET], seed), size, seed))
            print(f"M={size} seed {seed}: {runs[-1]}", flush=True)
        results["sizes"][str(size)] = runs
        write_results(args.output, results)  # after every size: an interrupted run keeps what it measured
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
