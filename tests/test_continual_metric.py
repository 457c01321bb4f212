# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The continual-learning `evaluate` metric shipped in the package: offline loading, hand-computed values,
batching, and input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

from peft_nsp.continual.continual_learning_metric import CONTINUAL_METRIC_PATH, load_continual_metric


TASKS = [[0, 1], [2, 3], [4, 5]]

# (after_task, reference, prediction) of every test sample; wrong predictions include classes of other tasks.
SAMPLES = [
    # after task 0: task 0 → 3/4
    (0, 0, 0), (0, 0, 0), (0, 1, 1), (0, 1, 0),
    # after task 1: task 0 → 4/4, task 1 → 2/2
    (1, 0, 0), (1, 1, 1), (1, 0, 0), (1, 1, 1),
    (1, 2, 2), (1, 3, 3),
    # after task 2: task 0 → 1/4, task 1 → 1/2, task 2 → 4/5
    (2, 0, 4), (2, 1, 1), (2, 0, 2), (2, 1, 5),
    (2, 2, 2), (2, 3, 5),
    (2, 4, 4), (2, 5, 5), (2, 4, 4), (2, 5, 5), (2, 5, 4),
]  # fmt: skip

F = Fraction
# A[t][j]; task 0 peaks after task 1 (not on the diagonal), so forgetting ≠ −BWT.
EXPECTED_MATRIX = [
    [F(3, 4), None, None],
    [F(1), F(1), None],
    [F(1, 4), F(1, 2), F(4, 5)],
]
EXPECTED_CORRECT = [[3], [4, 2], [1, 1, 4]]
EXPECTED_TOTAL = [[4], [4, 2], [4, 2, 5]]
EXPECTED_INCREMENTAL = [F(3, 4), F(6, 6), F(6, 11)]
EXPECTED_FINAL_ACCURACY = F(6, 11)  # (1 + 1 + 4) / (4 + 2 + 5)
EXPECTED_FINAL_MEAN_ACCURACY = F(31, 60)  # (1/4 + 1/2 + 4/5) / 3
EXPECTED_AVERAGE_INCREMENTAL_ACCURACY = F(101, 132)  # (3/4 + 1 + 6/11) / 3
EXPECTED_FORGETTING = F(5, 8)  # ((1 − 1/4) + (1 − 1/2)) / 2
EXPECTED_BWT = F(-1, 2)  # ((1/4 − 3/4) + (1/2 − 1)) / 2


def columns(samples):
    after_task, references, predictions = (list(column) for column in zip(*samples))
    return {"predictions": predictions, "references": references, "after_task": after_task}


@pytest.fixture
def metric():
    return load_continual_metric(keep_in_memory=True)


def assert_expected(results):
    approx = lambda value: pytest.approx(float(value), abs=1e-12)  # noqa: E731
    assert results["accuracy_matrix"] == [
        [None if value is None else approx(value) for value in row] for row in EXPECTED_MATRIX
    ]
    assert results["correct"] == EXPECTED_CORRECT
    assert results["total"] == EXPECTED_TOTAL
    assert results["incremental_accuracies"] == [approx(value) for value in EXPECTED_INCREMENTAL]
    assert results["final_accuracy"] == approx(EXPECTED_FINAL_ACCURACY)
    assert results["accuracy"] == approx(EXPECTED_FINAL_ACCURACY)
    assert results["final_mean_accuracy"] == approx(EXPECTED_FINAL_MEAN_ACCURACY)
    assert results["average_incremental_accuracy"] == approx(EXPECTED_AVERAGE_INCREMENTAL_ACCURACY)
    assert results["forgetting"] == approx(EXPECTED_FORGETTING)
    assert results["backward_transfer"] == approx(EXPECTED_BWT)
    json.dumps(results, allow_nan=False)  # JSON-safe: None, not NaN, above the diagonal


_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _guard(method):
        def guarded(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise OSError(f"network access attempted: {address}")
            return method(self, address)
        return guarded

    socket.socket.connect, socket.socket.connect_ex = _guard(_connect), _guard(_connect_ex)

    from peft_nsp.continual.continual_learning_metric import load_continual_metric

    metric = load_continual_metric()
    results = metric.compute(**json.loads(sys.argv[1]))
    print(json.dumps({"module_file": sys.modules[type(metric).__module__].__file__, "results": results}))
    """
)


@pytest.mark.parametrize("hub_offline", [None, "1"], ids=["online-env", "HF_HUB_OFFLINE=1"])
def test_loads_without_network_in_a_fresh_process(tmp_path, hub_offline):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # any Hub request fails at once
    env["HF_HOME"] = str(tmp_path / "hf")  # fresh modules and metrics caches
    for variable in ("HF_MODULES_CACHE", "HF_METRICS_CACHE", "HF_EVALUATE_CACHE"):
        env.pop(variable, None)
    if hub_offline is not None:
        env["HF_HUB_OFFLINE"] = hub_offline
    inputs = dict(columns(SAMPLES), tasks=TASKS)
    completed = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, json.dumps(inputs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    # evaluate copied the script from the package into the (fresh) modules cache and imported the copy
    module_file = Path(output["module_file"])
    assert module_file.is_relative_to(tmp_path / "hf" / "modules")
    assert module_file.read_bytes() == CONTINUAL_METRIC_PATH.read_bytes()
    assert_expected(output["results"])


def test_loaded_through_evaluate_from_the_package(metric):
    assert CONTINUAL_METRIC_PATH.parent == Path(__file__).resolve().parents[1] / "peft_nsp" / "continual"
    assert type(metric).__module__.startswith("evaluate_modules.metrics.continual_learning_metric.")
    assert type(metric).__name__ == "ContinualLearningMetric"
    assert "Visual Prompt Tuning in Null Space for Continual Learning" in metric.citation
    assert set(metric.features) == {"predictions", "references", "after_task"}


def test_hand_computed_example(metric):
    assert_expected(metric.compute(**columns(SAMPLES), tasks=TASKS))


def test_add_batch_in_several_batches_equals_one_compute(tmp_path):
    # file-backed (evaluate's default storage), samples interleaved across evaluations, uneven batches
    metric = load_continual_metric(cache_dir=str(tmp_path))
    order = [7, 20, 0, 13, 3, 18, 11, 1, 16, 5, 9, 14, 2, 19, 8, 12, 4, 17, 6, 15, 10]
    assert sorted(order) == list(range(len(SAMPLES)))
    shuffled = [SAMPLES[i] for i in order]
    for start, stop in [(0, 1), (1, 6), (6, 13), (13, 21)]:
        metric.add_batch(**columns(shuffled[start:stop]))
    batched = metric.compute(tasks=TASKS)
    assert_expected(batched)
    assert batched == load_continual_metric(keep_in_memory=True).compute(**columns(SAMPLES), tasks=TASKS)


def test_class_ids_need_not_follow_task_order(metric):
    relabel = {0: 7, 1: 2, 2: 0, 3: 9, 4: 5, 5: 1}  # class ids of a shuffled class order
    samples = [(t, relabel[y], relabel[p]) for t, y, p in SAMPLES]
    tasks = [[relabel[c] for c in classes] for classes in TASKS]
    assert_expected(metric.compute(**columns(samples), tasks=tasks))


def test_run_in_progress_and_single_task(metric):
    # evaluations may stop before the last task of `tasks`; forgetting and BWT are undefined with one task
    results = metric.compute(**columns([s for s in SAMPLES if s[0] == 0]), tasks=TASKS)
    assert results["accuracy_matrix"] == [[0.75]]
    assert results["final_accuracy"] == results["accuracy"] == results["average_incremental_accuracy"] == 0.75
    assert results["forgetting"] is None and results["backward_transfer"] is None
    json.dumps(results, allow_nan=False)


def test_a_resumed_run_adds_its_evaluations_to_the_previous_counts(metric):
    """What the loop does after each task: only the newest evaluation's predictions, the earlier counts as `previous`."""
    previous = {"correct": EXPECTED_CORRECT[:2], "total": EXPECTED_TOTAL[:2]}
    assert_expected(metric.compute(**columns([s for s in SAMPLES if s[0] == 2]), tasks=TASKS, previous=previous))
    with pytest.raises(ValueError, match=r"`after_task` must be ≥ 2 .*2 earlier evaluations are in `previous`"):
        metric.compute(**columns([s for s in SAMPLES if s[0] >= 1]), tasks=TASKS, previous=previous)


def test_missing_evaluation_is_named(metric):
    samples = [s for s in SAMPLES if s[0] != 1]
    with pytest.raises(ValueError, match=r"contiguous from 0.*`after_task` in \[1\]"):
        metric.compute(**columns(samples), tasks=TASKS)


def test_label_of_an_unseen_task_raises(metric):
    samples = SAMPLES[:4] + [(0, 2, 2)]  # a task-1 label in the evaluation after task 0
    with pytest.raises(ValueError, match="only tasks 0 … 0 have been seen"):
        metric.compute(**columns(samples), tasks=TASKS)


def test_mismatched_lengths_raise(metric):
    with pytest.raises(ValueError, match="Mismatch in the number of"):
        metric.add_batch(predictions=[0, 1, 0], references=[0, 1], after_task=[0, 0, 0])


@pytest.mark.parametrize(
    ("tasks", "samples", "match"),
    [
        (None, SAMPLES, "needs `tasks`"),
        ([[0, 1], [1, 2]], SAMPLES[:4], "Class 1 is in task 0 and in task 1"),
        ([[0, 1], []], SAMPLES[:4], r"`tasks\[1\]` must be a non-empty list"),
        (TASKS[:2], SAMPLES, "`after_task` goes up to 2, but `tasks` has only 2 tasks"),
        (TASKS, [(0, 0, 0), (1, 2, 2)], "Task 0 has no test samples in the evaluation after task 1"),
        (TASKS, [(0, 0, 0), (0, 6, 6)], r"Classes \[6\] of `true_class_ids` are missing"),
    ],
    ids=["no-tasks", "overlapping-tasks", "empty-task", "too-few-tasks", "task-without-samples", "unknown-class"],
)
def test_invalid_inputs_raise(metric, tasks, samples, match):
    with pytest.raises(ValueError, match=match):
        metric.compute(**columns(samples), tasks=tasks)


def test_loader_rejects_path():
    with pytest.raises(TypeError, match="do not pass `path`"):
        load_continual_metric(path="accuracy")
