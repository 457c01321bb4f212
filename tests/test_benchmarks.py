# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark scripts in their seconds-long smoke mode (tiny random ViT, synthetic data), so they don't rot."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import get_peft_model
from testing_utils import tiny_model

from peft_nsp import VPTNSPConfig
from peft_nsp.nullspace.update import project


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import forgetting  # noqa: E402


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    run_script("forgetting.py", "--smoke", "--output", str(results / "forgetting.json"))
    run_script(
        "forgetting.py",
        "--smoke",
        "--datasets",
        "digits-fashion-animals",
        "--methods",
        "probe-ca",
        "seq-ca",
        "nsp-ca",
        "--etas",
        "--output",
        str(results / "forgetting-digits-fashion-animals.json"),
    )
    run_script("speed.py", "--smoke", "--threads", "1", "--output", str(results / "speed.json"))
    run_script("growth.py", "--smoke", "--output", str(results / "growth.json"))
    run_script("fidelity.py", "--smoke", "--output", str(results / "fidelity.json"))
    run_script("analytic_head.py", "--smoke", "--output", str(results / "analytic-head.json"))
    return results


def test_forgetting_smoke_writes_every_row(smoke_results):
    data = json.loads((smoke_results / "forgetting.json").read_text())
    methods = {run["method"] for run in data["runs"]}
    assert methods == {*forgetting.DEFAULT_METHODS, "nsp-eta1.0"}
    norm_matched = next(run for run in data["runs"] if run["method"] == "seq-norm-matched")
    assert len(norm_matched["drift"]["absolute"]) == forgetting.NUM_TASKS["fashion-mnist"] - 1
    assert 0 < norm_matched["update_ratio"][1] <= 1  # projection with Frobenius normalisation only shrinks
    assert {"machine", "date", "command"} <= set(data["facts"])
    by_method = {run["method"]: run for run in data["runs"]}
    for method in ("ranpac", "ranpac-fta", "nsp-analytic"):
        assert by_method[method]["projection_size"] == 64  # the smoke run's M
    refit = by_method["nsp-analytic"]["refit"]
    assert 0 <= refit["test"] <= 1 and 0 <= refit["test_accumulated"] <= 1
    # The accumulated head is the run's own final accuracy over all seen test classes.
    assert refit["test_accumulated"] == pytest.approx(
        forgetting.summary(by_method["nsp-analytic"], "test")["final_accuracy"]
    )
    assert all(set(run["versions"]) >= {"torch", "transformers", "peft"} for run in data["runs"])


def test_analytic_head_smoke_measures_size_precision_and_cost(smoke_results):
    data = json.loads((smoke_results / "analytic-head.json").read_text())
    assert set(data["sizes"]) == {"0", "64"}
    for runs in data["sizes"].values():
        assert all(run["seconds_per_fit"] > 0 and 0 < run["gram_rounding"] < 1e-6 for run in runs)
        assert all(abs(run["test_float32"] - run["test"]) <= 0.05 for run in runs if run["float32_solvable"])


def test_classifier_alignment_rows_on_the_30_class_sequence(smoke_results):
    data = json.loads((smoke_results / "forgetting-digits-fashion-animals.json").read_text())
    assert {run["method"] for run in data["runs"]} == {"probe-ca", "seq-ca", "nsp-ca"}
    for run in data["runs"]:
        assert len(run["tasks"]) == 6 and sorted(c for task in run["tasks"] for c in task) == list(range(30))
        assert len(run["test"]["total"]) == len(run["validation"]["total"]) == 6


def test_speed_smoke_measures_every_cost(smoke_results):
    run = json.loads((smoke_results / "speed.json").read_text())["runs"][0]
    assert run["train_step"]["with_s"] > 0 and run["train_step"]["flops_per_step"] > 0
    assert run["statistics"]["naive_vs_library_max_relative_difference"] < 1e-4
    assert all(run["statistics"][kind]["peak_memory_bytes_per_image"] > 0 for kind in ("eval", "library", "naive"))
    assert [row["tasks"] for row in run["tasks"]] == [2, 3]
    assert run["tasks"][0]["null_space_bytes"] == run["tasks"][1]["null_space_bytes"]  # does not grow with tasks
    alignment = run["alignment"]
    width = 32  # the smoke ViT's hidden size: a packed covariance, a float64 mean and count per class
    assert alignment["bytes_per_class"] == 4 * width * (width + 1) // 2 + 8 * width + 8
    assert [row["classes"] for row in alignment["seconds_per_alignment"]] == [10, 50, 200]


def test_fidelity_smoke_measures_every_difference(smoke_results):
    data = json.loads((smoke_results / "fidelity.json").read_text())
    assert data["optimizer"]["relative_difference_of_prompt_change"] > 0  # L2-Adam and AdamW differ
    assert data["eigendecomposition"]["proj1"] < 1e-3  # same split: float32 SVD and float64 eigh agree closely
    assert data["attention"]["relative"] < 1e-4
    assert data["weighting"]["task_rows"][0] == 3 * data["weighting"]["task_rows"][1]
    augment = data["autoaugment"]
    assert augment["draws"] == 40 and augment["pixels_compared"] > 0 and augment["max_abs_difference"] <= 1


def test_growth_smoke_measures_every_task(smoke_results):
    rows = json.loads((smoke_results / "growth.json").read_text())["rows"]
    assert [row["task"] for row in rows] == [0, 1, 2, 3]
    assert all(row["training_folder_mb"] == 0 for row in rows)  # a finished task's checkpoints are removed
    assert all(row["stage_write_s"] >= row["heat_map_s"] > 0 for row in rows)


def test_report_is_generated_from_the_json(smoke_results, tmp_path):
    output, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    readme.write_text((BENCHMARKS.parent / "README.md").read_text())
    run_script("report.py", "--results", str(smoke_results), "--output", str(output), "--readme", str(readme))
    text = output.read_text()
    data = json.loads((smoke_results / "forgetting.json").read_text())
    probe = next(run for run in data["runs"] if run["method"] == "probe")
    final = 100 * forgetting.summary(probe, "test")["final_accuracy"]
    assert f"| {forgetting.LABELS['probe']} | {final:.2f} |" in text
    assert "No GPU was available" in text and "## Cost" in text and "η sweep" in text and "## Growth over 4" in text
    assert "## Fidelity" in text
    blocks = readme.read_text()  # the README's result blocks are rendered from the same JSON
    assert "| Adam + L2 (authors) vs AdamW" in blocks and "the class-statistics pass after a task costs" in blocks
    assert "AutoAugment: ours" in blocks
    assert "![Accuracy after each task, digits-fashion-animals](results/forgetting-digits-fashion-animals-" in text
    assert (smoke_results / "forgetting-digits-fashion-animals-digits-fashion-animals.png").stat().st_size > 0


def test_norm_matched_update_keeps_the_direction_and_takes_the_projected_norm(images):
    model = get_peft_model(tiny_model("vit", seed=3), VPTNSPConfig(prompt_length=3, classifier="linear"))
    model.add_task(3)
    model.update_null_space([images])
    model.add_task(3)
    twin = copy.deepcopy(model)
    optimizers = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.05) for m in (model, twin)]
    monitor = forgetting.TaskMonitor((images, torch.zeros(len(images))), ["0"], True, 8)
    monitor.on_train_begin(None, None, None, model=model, optimizer=optimizers[0])
    before = [p.detach().clone() for p in forgetting.prompt_targets(model)]
    for m, optimizer in zip((model, twin), optimizers):
        torch.nn.functional.cross_entropy(m(pixel_values=images).logits[:, 3:], torch.arange(6) % 3).backward()
        optimizer.step()
    for target, start, free in zip(model.projection_targets(), before, forgetting.prompt_targets(twin)):
        raw = free - start
        applied = target.parameter.detach() - start
        expected_norm = project(raw, target.prompt_projector, target.key_projector).norm()
        torch.testing.assert_close(applied.norm(), expected_norm, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(applied / applied.norm(), raw / raw.norm(), rtol=1e-4, atol=1e-6)
    assert 0 < monitor._projected < monitor._raw


def test_gpu_script_runs_its_whole_path_on_the_cpu(tmp_path):
    """`gpu.py run --smoke --device cpu`: the lease's two benchmarks, their JSON where the device tool collects it."""
    run_script("gpu.py", "run", "--device", "cpu", "--smoke", "--output", str(tmp_path))
    speed = json.loads((tmp_path / "speed-gpu.json").read_text())["runs"][0]
    assert speed["train_step"]["images_per_s"] > 0 and "alignment" in speed
    runs = json.loads((tmp_path / "forgetting-digits-fashion-animals-gpu.json").read_text())["runs"]
    assert {run["method"] for run in runs} == {
        "simplecil",
        "ranpac",
        "ranpac-fta",
        "seq",
        "nsp",
        "nsp-ca",
        "nsp-analytic",
        "joint",
    }


def test_demo_latency_table_and_readme_sentence_are_computed_from_the_recorded_times():
    """The demo's latency table (median, 90th percentile, worst, share under a second) and the README's sentence,
    against the statistics of the recorded seconds computed by hand."""
    import demo_latency
    import report

    seconds = [0.03, 0.01, 0.02, 1.5, 0.04]  # sorted: 0.01 0.02 0.03 0.04 1.5
    http = [0.2, 0.1, 0.3]
    results = {
        "facts": {"machine": "CPU", "date": "d", "torch": "t", "command": "c"},
        "run": "runs/quickstart/nsp",
        "revision": "task-4",
        "images": 5,
        "load_seconds": 0.5,
        "versions": {"torch": "2.13.0"},
        "load_average": [1.0, 2.0],
        "rows": [
            {"threads": 1, "path": "DemoRun.classify", "seconds": seconds},
            {"threads": 1, "path": "/classify over HTTP", "seconds": http},
        ],
    }
    table = demo_latency.markdown(results)
    assert "| 1 | DemoRun.classify | 30 | 1500 | 1500 | 80 % |" in table  # nearest-rank p90 of 5: the 5th (⌈4.5⌉)
    assert "| 1 | /classify over HTTP | 200 | 300 | 300 | 100 % |" in table
    sentence = report._demo_latency(results)
    assert "median 30 ms for the model and 200 ms through the HTTP route" in sentence and "worst 1500 ms" in sentence


def test_startup_table_gives_medians_and_their_ratio_to_the_floor():
    import startup

    results = {
        "facts": {"machine": "CPU", "date": "d", "torch": "t", "command": "c"},
        "repeats": 3,
        "versions": {"torch": "2.13.0"},
        "load_average": [1.0, 1.0],
        "seconds": {"recipe --help": [3.0, 9.0, 6.0], startup.FLOOR: [2.0, 4.0, 5.0]},
        "lines": {"recipe --help": 240, startup.FLOOR: 598},
    }
    table = startup.markdown(results)
    assert "| recipe --help | 6.00 | 1.50× | 240 |" in table  # median 6 over the floor's median 4
    assert f"| {startup.FLOOR} | 4.00 | 1.00× | 598 |" in table


def test_drift_refresh_math_against_brute_force():
    """`drift_refresh.py`: the SDC mean against a NumPy weighted average, the Gaussian replay against its samples
    pushed through the projection by hand, and, on snapshots whose features never move, every variant's statistics
    equal the real ones' (accumulated = refit, true moments = the Gaussians of their own time)."""
    import drift_refresh as dr

    generator = torch.Generator().manual_seed(0)
    mean, before, after = torch.randn(4, generator=generator).double(), torch.randn(30, 4, generator=generator), None
    after = before + torch.randn(30, 4, generator=generator)
    b, a, m = before.double().numpy(), after.double().numpy(), mean.numpy()
    distance = ((b - m) ** 2).sum(1)
    weights = np.exp(-distance / (2 * 0.3 * np.median(distance)))
    expected = m + (weights[:, None] * (a - b)).sum(0) / weights.sum()
    np.testing.assert_allclose(dr.drift_compensated_mean(mean, before, after, 0.3).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(dr.drift_compensated_mean(mean, before, after, None).numpy(), m + (a - b).mean(0))

    projection = torch.randn(4, 7, generator=generator).double()
    covariance = torch.cov(torch.randn(50, 4, generator=generator).double().T)
    noise = torch.randn(12, 4, generator=generator).double()
    gram, column = dr.gaussian_statistics(mean, covariance, 6, projection, noise)
    factor = np.linalg.cholesky(covariance.numpy() + 1e-4 * np.eye(4))
    phi = np.maximum((m + noise.numpy() @ factor.T) @ projection.numpy(), 0)
    np.testing.assert_allclose(gram.numpy(), 6 / 12 * phi.T @ phi, rtol=1e-10)
    np.testing.assert_allclose(column.numpy(), 6 / 12 * phi.sum(0), rtol=1e-10)

    tasks = [[2, 0], [1, 3]]
    labels = {split: torch.arange(4).repeat_interleave(6) for split in ("train", "validation", "test")}
    centres = torch.randn(4, 5, generator=generator) * 3
    frozen = {split: centres[y] + torch.randn(len(y), 5, generator=generator) for split, y in labels.items()}
    result = dr.refresh([frozen, frozen], labels, tasks, torch.randn(5, 16, generator=generator).double(), [1.0], 8)
    assert result["accumulated"] == result["refit"]
    for variant in ("gaussian-sdc0.1", "gaussian-sdc0.5", "gaussian-mean-drift", "gaussian-true-means"):
        assert result[variant] == result["gaussian"]
    import report

    sentence = report._refresh_finding({"runs": [{"method": "seq-analytic", "seed": 7, "variants": result}]}, 85.0)
    refit = 100 * result["refit"]["test"]
    assert f"VPT-Seq + analytic head (seed 7): accumulated {refit:.1f} %" in sentence  # no drift: accumulated = refit
    assert "The target needs 87.0 %" in sentence


def test_drift_refresh_smoke_writes_every_variant(tmp_path):
    output = tmp_path / "drift-refresh.json"
    printed = run_script("drift_refresh.py", "--smoke", "--output", str(output))
    (run,) = json.loads(output.read_text())["runs"]
    import drift_refresh

    assert list(run["variants"]) == list(drift_refresh.VARIANTS)
    assert all(0 <= v["test"] <= 1 and v["ridge"] > 0 for v in run["variants"].values())
    assert "| refit * |" in printed


def test_a_baseline_comparison_the_seeds_disagree_on_says_so():
    import report

    def run(method, seed, correct):
        return {"dataset": "d", "method": method, "seed": seed, "test": {"correct": [[correct]], "total": [[100]]}}

    ours = [run("nsp-analytic", s, c) for s, c in ((1, 80), (2, 90), (3, 70))]
    assert (
        report._verdict({"runs": ours + [run("ranpac", s, 60) for s in (1, 2, 3)]}, "d", "nsp-analytic", "ranpac")
        == "won"
    )
    assert (
        report._verdict({"runs": ours + [run("ranpac", s, 95) for s in (1, 2, 3)]}, "d", "nsp-analytic", "ranpac")
        == "lost"
    )
    theirs = [run("ranpac", s, c) for s, c in ((1, 82), (2, 85), (3, 75))]  # -2, +5, -5: the mean loses
    verdict = report._verdict({"runs": ours + theirs}, "d", "nsp-analytic", "ranpac")
    assert verdict == "lost on the mean, not in every seed (-2.0, +5.0, -5.0)"
