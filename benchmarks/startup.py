# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""How long a recipe's ``--help`` takes, next to what any `HfArgumentParser` command line pays for the same answer.

Every recipe parses `TrainingArguments` (through `NSPConfig`) with transformers' `HfArgumentParser`, so importing
transformers' training stack is the floor of its ``--help``. Each command runs ``--repeats`` times, alternating (so
both see the same load); the table gives the median wall time of each and their ratio, with the load average::

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, facts_line, markdown_table, package_versions, run_facts, write_results


ROOT = Path(__file__).resolve().parents[1]
#: name → command (run from the repository root).
COMMANDS = {
    "recipes/train_imagefolder.py --help": [sys.executable, "recipes/train_imagefolder.py", "--help"],
    "recipes/train_cifar100.py --help": [sys.executable, "recipes/train_cifar100.py", "--help"],
    "HfArgumentParser(TrainingArguments) --help (the floor)": [
        sys.executable,
        "-c",
        "from transformers import HfArgumentParser, TrainingArguments; "
        "HfArgumentParser(TrainingArguments).parse_args(['--help'])",
    ],
    "import torch": [sys.executable, "-c", "import torch"],
}
FLOOR = "HfArgumentParser(TrainingArguments) --help (the floor)"


def markdown(results: dict[str, Any]) -> str:
    floor = statistics.median(results["seconds"][FLOOR])
    rows = [
        [
            name,
            f"{statistics.median(seconds):.2f}",
            f"{statistics.median(seconds) / floor:.2f}×",
            results["lines"][name],
        ]
        for name, seconds in results["seconds"].items()
    ]
    return "\n".join(
        [
            "## Start-up: a recipe's `--help` (`results/startup.json`)",
            "",
            facts_line(results["facts"]),
            f"{results['repeats']} alternating runs of each command; {', '.join(f'{k} {v}' for k, v in results['versions'].items())}; "
            f"load average {results['load_average'][0]:.1f} at the start, {results['load_average'][1]:.1f} at the end.",
            "",
            markdown_table(["command", "median s", "of the floor", "lines printed"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "startup.json")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    lines: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
            seconds[name].append(time.perf_counter() - start)
            lines[name] = len(done.stdout.splitlines())
    results = {
        "facts": run_facts("cpu"),
        "repeats": args.repeats,
        "versions": package_versions(),
        "load_average": [load_start[0], os.getloadavg()[0]],
        "seconds": seconds,
        "lines": lines,
    }
    write_results(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
