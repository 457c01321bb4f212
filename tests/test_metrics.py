# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Continual-learning metrics and plots, checked against numbers computed by hand."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from peft_nsp.continual import ContinualMetrics, count_correct, plot_accuracy_curve, plot_accuracy_matrix


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Three tasks of two classes each; test sets of 4, 2 and 5 samples, so sample weighting matters.
TASK_OF_CLASS = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}
# (true, predicted) class ids of the evaluation after each task (all seen test samples, in a mixed order).
EVALUATIONS = [
    # after task 0: task 0 → 3/4
    ([0, 1, 0, 1], [0, 1, 0, 0]),
    # after task 1: task 0 → 4/4 (better than after task 0), task 1 → 1/2 (3 predicted as 1)
    ([2, 0, 1, 3, 0, 1], [2, 0, 1, 1, 0, 1]),
    # after task 2: task 0 → 2/4, task 1 → 2/2, task 2 → 4/5
    ([0, 4, 1, 2, 5, 0, 4, 3, 5, 1, 4], [0, 4, 5, 2, 5, 2, 4, 3, 5, 1, 0]),
]
CORRECT = [[3], [4, 1], [2, 2, 4]]
TOTAL = [[4], [4, 2], [4, 2, 5]]

# A = [[3/4, -, -], [1, 1/2, -], [1/2, 1, 4/5]]
EXPECTED_A = [[0.75, math.nan, math.nan], [1.0, 0.5, math.nan], [0.5, 1.0, 0.8]]
EXPECTED_SEEN = [3 / 4, (4 + 1) / (4 + 2), (2 + 2 + 4) / (4 + 2 + 5)]  # 0.75, 5/6, 8/11
EXPECTED_FINAL = 8 / 11  # 72.73 %
EXPECTED_FINAL_MEAN = (0.5 + 1.0 + 0.8) / 3  # 76.67 %
EXPECTED_AIA = (3 / 4 + 5 / 6 + 8 / 11) / 3  # 77.02 %
# After task 1: task 0: max(0.75, 1.0) − 1.0 = 0.
# After task 2: task 0: max(0.75, 1.0, 0.5) − 0.5 = 0.5 (max at the intermediate task 1, not the diagonal);
#               task 1: max(0.5, 1.0) − 1.0 = 0  → mean 0.25.
EXPECTED_FORGETTING = [math.nan, 0.0, 0.25]
# BWT: ((0.5 − 0.75) + (1.0 − 0.5)) / 2 = 0.125.
EXPECTED_BWT = 0.125


def recorded_metrics() -> ContinualMetrics:
    metrics = ContinualMetrics()
    for task, (true, predicted) in enumerate(EVALUATIONS):
        correct, total = count_correct(np.array(predicted), np.array(true), TASK_OF_CLASS, num_tasks_seen=task + 1)
        metrics.record_task(task, correct, total)
    return metrics


def test_count_correct_per_task():
    for task, (true, predicted) in enumerate(EVALUATIONS):
        assert count_correct(predicted, true, TASK_OF_CLASS, task + 1) == (CORRECT[task], TOTAL[task])
    # Array lookup and torch tensors give the same counts.
    lookup = np.array([0, 0, 1, 1, 2, 2])
    true, predicted = EVALUATIONS[2]
    assert count_correct(torch.tensor(predicted), torch.tensor(true), lookup, 3) == (CORRECT[2], TOTAL[2])
    # A label of a seen task predicted as a future class counts as wrong, for the label's task.
    assert count_correct([4, 0], [0, 0], TASK_OF_CLASS, 1) == ([1], [2])


def test_derived_metrics_match_hand_computation():
    metrics = recorded_metrics()
    assert metrics.correct == CORRECT and metrics.total == TOTAL
    assert metrics.num_tasks == 3
    np.testing.assert_allclose(metrics.accuracy_matrix, EXPECTED_A, equal_nan=True)
    np.testing.assert_allclose(metrics.incremental_accuracies, EXPECTED_SEEN)
    assert metrics.final_accuracy == pytest.approx(EXPECTED_FINAL)
    assert metrics.final_mean_accuracy == pytest.approx(EXPECTED_FINAL_MEAN)
    assert metrics.average_incremental_accuracy == pytest.approx(EXPECTED_AIA)
    np.testing.assert_allclose(metrics.forgetting_per_task, EXPECTED_FORGETTING, equal_nan=True)
    assert metrics.forgetting == pytest.approx(0.25)
    assert metrics.backward_transfer == pytest.approx(EXPECTED_BWT)
    assert metrics.summary() == pytest.approx(
        {
            "final_accuracy": EXPECTED_FINAL,
            "final_mean_accuracy": EXPECTED_FINAL_MEAN,
            "average_incremental_accuracy": EXPECTED_AIA,
            "forgetting": 0.25,
            "backward_transfer": EXPECTED_BWT,
        }
    )


def test_single_task_has_no_forgetting_or_bwt():
    metrics = ContinualMetrics()
    metrics.record_task(0, [3], [4])
    assert metrics.final_accuracy == metrics.final_mean_accuracy == metrics.average_incremental_accuracy == 0.75
    assert math.isnan(metrics.forgetting) and math.isnan(metrics.backward_transfer)
    summary_lines = metrics.format_table().splitlines()[-2:]
    assert [line.split(" : ") for line in summary_lines] == [
        ["forgetting (after task 0)       ", "n/a"],
        ["backward transfer (BWT)         ", "n/a"],
    ]


def test_square_nan_arrays_are_accepted():
    correct = np.array([[3, np.nan, np.nan], [4, 1, np.nan], [2, 2, 4]])
    total = np.array([[4, np.nan, np.nan], [4, 2, np.nan], [4, 2, 5]])
    metrics = ContinualMetrics(correct=correct, total=total)
    assert metrics == recorded_metrics()
    assert all(type(value) is int for row in metrics.correct for value in row)


def test_json_round_trip_and_atomic_write(tmp_path):
    metrics = recorded_metrics()
    data = metrics.to_dict()
    assert data == {"correct": CORRECT, "total": TOTAL}
    assert ContinualMetrics.from_dict(json.loads(json.dumps(data))) == metrics

    path = tmp_path / "results" / "metrics.json"
    assert metrics.save_json(path) == path
    assert ContinualMetrics.load_json(path) == metrics
    metrics.record_task(3, [1, 1, 1, 1], [4, 2, 5, 3])
    metrics.save_json(path)  # overwrite
    assert ContinualMetrics.load_json(path) == metrics
    assert os.listdir(path.parent) == ["metrics.json"]


def test_failed_write_keeps_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    recorded_metrics().save_json(path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        ContinualMetrics(correct=[[1]], total=[[1]]).save_json(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_format_table_shows_percentages():
    table = recorded_metrics().format_table()
    lines = table.splitlines()
    assert lines[1].split() == ["after", "task", "|", "task", "0", "task", "1", "task", "2", "|", "all", "seen"]
    assert lines[3].split() == ["0", "|", "75.00", "|", "75.00"]
    assert lines[4].split() == ["1", "|", "100.00", "50.00", "|", "83.33"]
    assert lines[5].split() == ["2", "|", "50.00", "100.00", "80.00", "|", "72.73"]
    assert "final accuracy (sample-weighted) : 72.73%" in table
    assert "final accuracy (mean over tasks) : 76.67%" in table
    assert "average incremental accuracy     : 77.02%" in table
    assert "forgetting (after task 2)        : 25.00%" in table
    assert "backward transfer (BWT)          : +12.50%" in table


def test_plots_write_png_files(tmp_path):
    metrics = recorded_metrics()
    baseline = ContinualMetrics(correct=[[4], [1, 2]], total=[[4], [4, 2]])
    matrix_path = plot_accuracy_matrix(metrics, tmp_path / "plots" / "matrix.png", title="VPT-NSP²")
    curve_path = plot_accuracy_curve(metrics, tmp_path / "curve.png", label="VPT-NSP²", others={"VPT-Seq": baseline})
    for path in (matrix_path, curve_path):
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)
        assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    assert sorted(os.listdir(tmp_path)) == ["curve.png", "plots"]
    assert os.listdir(tmp_path / "plots") == ["matrix.png"]


def test_plots_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="`metrics` has no recorded task"):
        plot_accuracy_matrix(ContinualMetrics(), tmp_path / "m.png")
    with pytest.raises(ValueError, match="also a key of `others`"):
        plot_accuracy_curve(recorded_metrics(), tmp_path / "c.png", label="a", others={"a": recorded_metrics()})


def test_record_task_rejects_bad_input():
    metrics = ContinualMetrics()
    with pytest.raises(ValueError, match="recorded in order.*expected `task`=0, got 1"):
        metrics.record_task(1, [1, 1], [2, 2])
    with pytest.raises(ValueError, match=r"`correct_per_task` for task 0 must have one entry .* \(1\), got 2"):
        metrics.record_task(0, [1, 1], [2])
    with pytest.raises(ValueError, match="`total_per_task` for task 0 must have one entry"):
        metrics.record_task(0, [1], [])
    with pytest.raises(ValueError, match="Task 0 has no test samples"):
        metrics.record_task(0, [0], [0])
    with pytest.raises(ValueError, match="more correct predictions"):
        metrics.record_task(0, [3], [2])
    with pytest.raises(ValueError, match="non-negative whole counts"):
        metrics.record_task(0, [0.5], [2])
    assert metrics.num_tasks == 0  # failed calls leave nothing behind
    metrics.record_task(0, [1], [2])
    with pytest.raises(ValueError, match="expected `task`=1, got 0"):
        metrics.record_task(0, [1], [2])
    with pytest.raises(ValueError, match="No task has been recorded"):
        _ = ContinualMetrics().final_accuracy


def test_constructor_and_from_dict_reject_bad_input():
    with pytest.raises(ValueError, match=r"`correct\[0\]` must have 1 entries"):
        ContinualMetrics(correct=[[1, 0]], total=[[1]])
    with pytest.raises(ValueError, match="`correct` has 1 rows but `total` has 2"):
        ContinualMetrics(correct=[[1]], total=[[1], [1, 1]])
    with pytest.raises(ValueError, match="Task 1 has no test samples in the evaluation after task 1"):
        ContinualMetrics(correct=[[1], [1, 0]], total=[[1], [1, 0]])
    with pytest.raises(ValueError, match="exactly the keys `correct` and `total`"):
        ContinualMetrics.from_dict({"correct": [[1]]})


def test_count_correct_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        count_correct([0, 1], [0], TASK_OF_CLASS, 1)
    with pytest.raises(ValueError, match="must be integers"):
        count_correct([0.0], [0.0], TASK_OF_CLASS, 1)
    with pytest.raises(ValueError, match=r"Classes \[7\] .* missing from `task_of_class`"):
        count_correct([7], [7], TASK_OF_CLASS, 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\)"):
        count_correct([6], [6], np.array([0, 0, 1, 1, 2, 2]), 3)
    with pytest.raises(ValueError, match=r"classes of tasks \[2\], but only tasks 0 … 1 have been seen"):
        count_correct([4], [4], TASK_OF_CLASS, 2)
    with pytest.raises(ValueError, match="`num_tasks_seen` must be ≥ 1"):
        count_correct([0], [0], TASK_OF_CLASS, 0)


def test_metrics_json_holds_the_accuracies_not_only_the_counts(tmp_path):
    path = recorded_metrics().save_json(tmp_path / "metrics.json")
    data = json.loads(path.read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    expected = [[None if math.isnan(v) else v for v in row] for row in EXPECTED_A]
    for row, expected_row in zip(data["accuracy_matrix"], expected):
        assert [v is None for v in row] == [v is None for v in expected_row]
        assert [v for v in row if v is not None] == pytest.approx([v for v in expected_row if v is not None])
    assert data["incremental_accuracies"] == pytest.approx(EXPECTED_SEEN)
    assert data["final_accuracy"] == pytest.approx(EXPECTED_FINAL)
    assert data["forgetting"] == pytest.approx(EXPECTED_FORGETTING[-1])
    assert data["backward_transfer"] == pytest.approx(EXPECTED_BWT)
    assert data["average_incremental_accuracy"] == pytest.approx(EXPECTED_AIA)
