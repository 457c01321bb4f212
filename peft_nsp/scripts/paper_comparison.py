# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""``python -m peft_nsp.scripts.paper_comparison``: our final accuracy and forgetting as the paper reports them, the
mean over seeds 2024, 2025 and 2026, next to the paper's numbers.

Give the three finished recipe runs (their ``output_dir``, or their ``summary.json``), or ``--runs_root`` and
``--benchmark`` to find the recipes' default folders ``<runs_root>/<benchmark>-<method>-seed<seed>``. The runs must
be of one benchmark and one method, with the three seeds; ``--allow_other_seeds`` compares other seeds, with a
warning. The standard deviation is the sample one (n − 1) over the runs; ``--json FILE`` also writes the comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._io import write_atomically
from ..continual.paper import PAPER_URL, paper_results
from ..continual.stages import read_progress


PAPER_SEEDS = (2024, 2025, 2026)
SUMMARY_FILE = "summary.json"
#: ``--method`` → the recipes' folder name part (``runs/<benchmark>-<part>-seed<seed>``).
FOLDER_METHODS = ("nsp", "seq", "joint")


@dataclass(frozen=True)
class RunSummary:
    """One finished run: where, which benchmark/method/seed, and its final accuracy and forgetting in %."""

    run_dir: str
    benchmark: str
    method: str
    seed: int | None
    final_accuracy: float
    forgetting: float | None


def read_run(path: str | os.PathLike) -> RunSummary:
    """The ``summary.json`` of a run (``path`` is the run's ``output_dir`` or the file); the seed comes from the
    summary or else from the run's ``progress.json``, which must also say that every planned task finished."""
    path = Path(path)
    summary_path = path / SUMMARY_FILE if path.is_dir() else path
    if not summary_path.is_file():
        raise ValueError(f"`{path}` has no `{SUMMARY_FILE}`: is it the `output_dir` of a finished recipe run?")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    run_dir = summary_path.parent
    record = read_progress(run_dir)
    if record is not None and record.finished_tasks < len(record.tasks):
        raise ValueError(
            f"`{run_dir}` finished {record.finished_tasks} of {len(record.tasks)} tasks: finish the run "
            "(re-run its command) first."
        )
    seed = summary.get("seed", None if record is None else record.seed)
    metrics = summary["metrics"]
    forgetting = metrics.get("forgetting")
    return RunSummary(
        str(run_dir),
        summary["benchmark"],
        summary["method"],
        seed,
        100 * metrics["final_accuracy"],
        None if forgetting is None else 100 * forgetting,
    )


def mean_std(values: Sequence[float | None]) -> dict[str, float] | None:
    """``{"mean", "std"}`` of ``values`` (sample std, n − 1; 0 for one value); ``None`` if any value is ``None``."""
    if any(value is None for value in values):
        return None
    mean = sum(values) / len(values)
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(variance)}


def compare_with_paper(
    runs: Sequence[RunSummary], allow_other_seeds: bool = False, benchmark: str | None = None
) -> dict[str, Any]:
    """Mean ± std of ``runs`` and the paper's numbers for their benchmark and method (all in %).

    Raises `ValueError` when the runs differ in benchmark or method (or are not of ``benchmark``, when given),
    repeat a seed, or (unless ``allow_other_seeds``, then with a warning) are not of exactly the paper's seeds.
    """
    if not runs:
        raise ValueError("`runs` is empty: give the run folders to compare.")
    for field_name in ("benchmark", "method"):
        values = sorted({getattr(run, field_name) for run in runs})
        if len(values) > 1:
            raise ValueError(f"The runs are of different `{field_name}`s {values}: compare one at a time.")
    if benchmark is not None and runs[0].benchmark != benchmark:
        raise ValueError(f"The runs are of `benchmark` {runs[0].benchmark!r}, not {benchmark!r}.")
    run_seeds = [run.seed for run in runs]
    if None in run_seeds or len(set(run_seeds)) < len(run_seeds):
        raise ValueError(f"The runs' seeds {run_seeds} are unknown or repeated: each run must be a distinct seed.")
    if sorted(run_seeds) != list(PAPER_SEEDS):
        message = (
            f"The runs' seeds {sorted(run_seeds)} are not the paper's {list(PAPER_SEEDS)}: the paper reports "
            "the mean of these three seeds."
        )
        if not allow_other_seeds:
            raise ValueError(message + " Pass `--allow_other_seeds` to compare anyway.")
        warnings.warn(message, stacklevel=2)
    benchmark, method = runs[0].benchmark, runs[0].method
    runs = sorted(runs, key=lambda run: run.seed)
    ours = {
        "final_accuracy": mean_std([run.final_accuracy for run in runs]),
        "forgetting": mean_std([run.forgetting for run in runs]),
    }
    published = paper_results(benchmark).get(method)
    paper = None if published is None else asdict(published)
    difference = (
        None
        if paper is None
        else {key: None if ours[key] is None or paper[key] is None else ours[key]["mean"] - paper[key] for key in ours}
    )
    return {
        "benchmark": benchmark,
        "method": method,
        "seeds": [run.seed for run in runs],
        "runs": [asdict(run) for run in runs],
        **ours,
        "paper": paper,
        "difference": difference,
        "paper_url": PAPER_URL,
    }


def format_comparison(comparison: dict[str, Any]) -> str:
    """The comparison as a Markdown table with a heading and the per-seed values."""

    def cell(value: float | dict[str, float] | None, signed: bool = False) -> str:
        if value is None:
            return "–"
        if isinstance(value, dict):
            return f"{value['mean']:.2f} ± {value['std']:.2f}"
        return f"{value:+.2f}" if signed else f"{value:.2f}"

    method, n = comparison["method"], len(comparison["runs"])
    rows = [
        f"| {method} (ours, mean ± std of {n}) | {cell(comparison['final_accuracy'])} | "
        f"{cell(comparison['forgetting'])} |"
    ]
    paper = comparison["paper"]
    if paper is None:
        rows.append(f"| {method} (paper) | not reported | not reported |")
    else:
        rows.append(f"| {method} (paper, mean of 3) | {cell(paper['final_accuracy'])} | {cell(paper['forgetting'])} |")
        difference = comparison["difference"]
        rows.append(
            f"| ours − paper | {cell(difference['final_accuracy'], signed=True)} | "
            f"{cell(difference['forgetting'], signed=True)} |"
        )
    per_seed = ", ".join(
        f"{run['seed']}: {cell(run['final_accuracy'])} / {cell(run['forgetting'])}" for run in comparison["runs"]
    )
    return "\n".join(
        [
            f"{method} on {comparison['benchmark']}, seeds {', '.join(map(str, comparison['seeds']))} "
            f"({comparison['paper_url']}, Table 1):",
            "| | final accuracy (%) | forgetting (%) |",
            "|---|---|---|",
            *rows,
            f"Per seed (final accuracy / forgetting, %): {per_seed}.",
        ]
    )


def run_folders(runs_root: str | os.PathLike, benchmark: str, method: str, seeds: Sequence[int]) -> list[Path]:
    """The recipes' default ``output_dir`` of each seed: ``<runs_root>/<benchmark>-<method>-seed<seed>``."""
    return [Path(runs_root) / f"{benchmark}-{method}-seed{seed}" for seed in seeds]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m peft_nsp.scripts.paper_comparison",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", help="the runs' `output_dir`s (or their summary.json)")
    parser.add_argument("--runs_root", help="find the runs as <runs_root>/<benchmark>-<method>-seed<seed>")
    parser.add_argument("--benchmark", help="e.g. cifar100-10, imagenet-r-10 (needed with --runs_root; checked)")
    parser.add_argument("--method", default="nsp", choices=FOLDER_METHODS, help="with --runs_root (default: nsp)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(PAPER_SEEDS),
        help="with --runs_root: the seeds' folders (default: the paper's 2024 2025 2026)",
    )
    parser.add_argument("--allow_other_seeds", action="store_true", help="compare runs of other seeds (warns)")
    parser.add_argument("--json", type=Path, help="also write the comparison to this JSON file")
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.runs_root):
        parser.error("give either the run folders or --runs_root with --benchmark")
    if args.runs_root and not args.benchmark:
        parser.error("--runs_root needs --benchmark")
    folders = args.runs or run_folders(args.runs_root, args.benchmark, args.method, args.seeds)
    try:
        comparison = compare_with_paper(
            [read_run(folder) for folder in folders], args.allow_other_seeds, args.benchmark
        )
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(format_comparison(comparison))
    if args.json:
        write_atomically(args.json, (json.dumps(comparison, indent=2, allow_nan=False) + "\n").encode())
    return comparison


if __name__ == "__main__":
    main()
