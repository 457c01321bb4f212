# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""`python -m peft_nsp.scripts.paper_comparison`: three seeds' mean ± std next to the paper, on summary.json files
written here as the recipes write them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peft_nsp.continual.stages import RunRecord
from peft_nsp.scripts.paper_comparison import main


#: The paper's Table 1, VPT-NSP² on 10-split CIFAR-100 (final accuracy, forgetting; %).
PAPER_CIFAR100_10_NSP = (91.74, 3.28)
RESULTS = {2024: (0.9102, 0.0351), 2025: (0.9188, 0.0297), 2026: (0.9135, 0.0330)}  # fractions, as summary.json


def write_run(
    root: Path,
    seed: int,
    accuracy: float,
    forgetting: float | None,
    benchmark: str = "cifar100-10",
    method: str = "VPT-NSP²",
    folder: str = "nsp",
    tasks: int = 10,
    finished: int | None = None,
    seed_in_summary: bool = False,
) -> Path:
    """A run folder as the recipes leave it: ``summary.json`` and the run record ``progress.json``."""
    run = root / f"{benchmark}-{folder}-seed{seed}"
    run.mkdir(parents=True)
    summary = {
        "benchmark": benchmark,
        "method": method,
        "output_dir": str(run),
        "metrics": {"final_accuracy": accuracy, "forgetting": forgetting, "final_mean_accuracy": accuracy},
    }
    if seed_in_summary:
        summary["seed"] = seed
    (run / "summary.json").write_text(json.dumps(summary))
    record = RunRecord(
        tasks=[[f"class {i}"] for i in range(tasks)],
        seed=seed,
        method=method,
        finished_tasks=tasks if finished is None else finished,
    )
    (run / "progress.json").write_text(record.to_json())
    return run


def test_three_seeds_mean_and_std_next_to_the_paper(tmp_path, capsys):
    for seed, (accuracy, forgetting) in RESULTS.items():
        write_run(tmp_path / "runs", seed, accuracy, forgetting)
    output = tmp_path / "out" / "comparison.json"
    main(["--runs_root", str(tmp_path / "runs"), "--benchmark", "cifar100-10", "--json", str(output)])
    data = json.loads(output.read_text())
    accuracies = 100 * np.array([RESULTS[s][0] for s in (2024, 2025, 2026)])
    forgettings = 100 * np.array([RESULTS[s][1] for s in (2024, 2025, 2026)])
    assert data["seeds"] == [2024, 2025, 2026] and data["method"] == "VPT-NSP²"
    assert data["final_accuracy"]["mean"] == pytest.approx(accuracies.mean())
    assert data["final_accuracy"]["std"] == pytest.approx(accuracies.std(ddof=1))
    assert data["forgetting"]["mean"] == pytest.approx(forgettings.mean())
    assert data["forgetting"]["std"] == pytest.approx(forgettings.std(ddof=1))
    assert (data["paper"]["final_accuracy"], data["paper"]["forgetting"]) == PAPER_CIFAR100_10_NSP
    assert data["difference"]["final_accuracy"] == pytest.approx(accuracies.mean() - PAPER_CIFAR100_10_NSP[0])
    assert data["difference"]["forgetting"] == pytest.approx(forgettings.mean() - PAPER_CIFAR100_10_NSP[1])
    printed = capsys.readouterr().out
    assert f"| {accuracies.mean():.2f} ± {accuracies.std(ddof=1):.2f} | " in printed
    assert f"{forgettings.mean():.2f} ± {forgettings.std(ddof=1):.2f} |" in printed
    assert "| 91.74 | 3.28 |" in printed and f"{accuracies.mean() - 91.74:+.2f}" in printed
    assert "2024: 91.02 / 3.51" in printed


def test_run_folders_or_summary_files_in_any_order_and_the_module_entry_point(tmp_path):
    runs = [write_run(tmp_path, seed, *RESULTS[seed], seed_in_summary=seed == 2025) for seed in (2026, 2024, 2025)]
    runs[2] = runs[2] / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "peft_nsp.scripts.paper_comparison", *map(str, runs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "seeds 2024, 2025, 2026" in done.stdout and "VPT-NSP² (paper, mean of 3)" in done.stdout


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": (2024, 2025, 2027)}, "are not the paper's [2024, 2025, 2026]"),
        ({"seeds": (2024, 2025)}, "are not the paper's"),
        ({"benchmark": "imagenet-r-10"}, "different `benchmark`s"),
        ({"method": "VPT-Seq"}, "different `method`s"),
        ({"finished": 7}, "finished 7 of 10 tasks"),
    ],
)
def test_mismatched_runs_are_refused(tmp_path, capsys, change, message):
    seeds = change.get("seeds", (2024, 2025, 2026))
    runs = []
    for i, seed in enumerate(seeds):
        odd = {key: value for key, value in change.items() if key != "seeds"} if i == len(seeds) - 1 else {}
        runs.append(write_run(tmp_path, seed, 0.9, 0.03, **odd))
    with pytest.raises(SystemExit) as exit_info:
        main([str(run) for run in runs])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_repeated_seeds_missing_runs_and_another_benchmark_are_refused(tmp_path, capsys):
    run = write_run(tmp_path, 2024, 0.9, 0.03)
    with pytest.raises(SystemExit):
        main([str(run), str(run), str(write_run(tmp_path, 2025, 0.9, 0.03))])
    assert "unknown or repeated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--runs_root", str(tmp_path), "--benchmark", "cifar100-10"])  # no seed 2026 folder
    assert "has no `summary.json`" in capsys.readouterr().err
    write_run(tmp_path, 2026, 0.9, 0.03)
    with pytest.raises(SystemExit):
        main(
            [str(tmp_path / f"cifar100-10-nsp-seed{seed}") for seed in (2024, 2025, 2026)]
            + ["--benchmark", "domainnet-10"]
        )
    assert "not 'domainnet-10'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--benchmark", "cifar100-10"])  # neither runs nor --runs_root
    assert "give either the run folders or --runs_root" in capsys.readouterr().err


def test_other_seeds_with_a_warning_joint_runs_and_methods_the_paper_did_not_run(tmp_path, capsys):
    for seed in (1, 2, 3):
        write_run(
            tmp_path / "joint", seed, 0.93 + seed / 1000, None, method="Upper bound (joint)", folder="joint", tasks=1
        )
    with pytest.warns(UserWarning, match="not the paper's"):
        data = main(
            [
                "--runs_root",
                str(tmp_path / "joint"),
                "--benchmark",
                "cifar100-10",
                "--method",
                "joint",
                "--seeds",
                "1",
                "2",
                "3",
                "--allow_other_seeds",
            ]
        )
    assert data["forgetting"] is None and data["paper"] == {"final_accuracy": 93.87, "forgetting": None}
    assert data["final_accuracy"] == {"mean": pytest.approx(93.2), "std": pytest.approx(0.1)}
    assert "| 93.20 ± 0.10 | – |" in capsys.readouterr().out
    for seed in (2024, 2025, 2026):
        write_run(tmp_path / "ca", seed, 0.92, 0.02, method="VPT-NSP² + CA")
    data = main(["--runs_root", str(tmp_path / "ca"), "--benchmark", "cifar100-10"])
    assert data["paper"] is None and data["difference"] is None
    assert data["forgetting"] == {"mean": pytest.approx(2.0), "std": pytest.approx(0.0)}
    assert "| VPT-NSP² + CA (paper) | not reported | not reported |" in capsys.readouterr().out
