# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental accuracy bookkeeping: the accuracy matrix and the metrics derived from it.

``A[t, j]`` is the accuracy on the test data of task ``j`` after training task ``t`` (defined for ``j ≤ t``,
tasks counted from 0), predicting over all classes seen so far (ALGORITHM.md, "Metrics"). The correct and
sample counts behind every entry are stored, so the sample-weighted metrics are exact. Accuracies are
fractions in ``[0, 1]``; only [`ContinualMetrics.format_table`] prints percent.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_atomically


@dataclass
class ContinualMetrics:
    """Correct and sample counts of every evaluation of a class-incremental run.

    Row ``t`` of ``correct`` / ``total`` holds the counts for the test data of tasks ``0 … t`` after training
    task ``t``: a ragged lower triangle. Square ``(T, T)`` arrays are accepted too, with NaN above the
    diagonal. Every task must have at least one test sample.

    Example:

    ```python
    >>> metrics = ContinualMetrics()
    >>> for task in range(num_tasks):
    ...     train(task)
    ...     correct, total = count_correct(predictions, labels, task_of_class, num_tasks_seen=task + 1)
    ...     metrics.record_task(task, correct, total)
    >>> print(metrics.format_table())
    ```
    """

    correct: list[list[int]] = field(default_factory=list)
    """``correct[t][j]``: test samples of task ``j`` classified correctly after training task ``t``."""
    total: list[list[int]] = field(default_factory=list)
    """``total[t][j]``: test samples of task ``j`` evaluated after training task ``t``."""

    def __post_init__(self) -> None:
        correct = [_parse_row("correct", _lower_part("correct", row, t), t) for t, row in enumerate(self.correct)]
        total = [_parse_row("total", _lower_part("total", row, t), t) for t, row in enumerate(self.total)]
        if len(correct) != len(total):
            raise ValueError(f"`correct` has {len(correct)} rows but `total` has {len(total)}.")
        for t, (correct_row, total_row) in enumerate(zip(correct, total)):
            _check_counts(correct_row, total_row, t)
        self.correct, self.total = correct, total

    @property
    def num_tasks(self) -> int:
        """Number of tasks recorded so far (``T``)."""
        return len(self.total)

    def record_task(self, task: int, correct_per_task: Sequence[int], total_per_task: Sequence[int]) -> None:
        """Append the evaluation after training ``task``.

        Args:
            task: index of the task just trained; must be [`num_tasks`] (tasks are recorded in order).
            correct_per_task: ``(task + 1,)`` correct predictions on the test data of tasks ``0 … task``.
            total_per_task: ``(task + 1,)`` test samples of tasks ``0 … task``, each ``≥ 1``.
        """
        if task != self.num_tasks:
            raise ValueError(
                f"Tasks must be recorded in order, starting at 0: expected `task`={self.num_tasks}, got {task}."
            )
        correct = _parse_row("correct_per_task", correct_per_task, task)
        total = _parse_row("total_per_task", total_per_task, task)
        _check_counts(correct, total, task)
        self.correct.append(correct)
        self.total.append(total)

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """``(T, T)`` float64 ``A[t, j] = correct[t][j] / total[t][j]``; NaN above the diagonal (``j > t``)."""
        matrix = np.full((self.num_tasks, self.num_tasks), np.nan)
        for t, (correct_row, total_row) in enumerate(zip(self.correct, self.total)):
            matrix[t, : t + 1] = np.asarray(correct_row) / np.asarray(total_row)
        return matrix

    @property
    def incremental_accuracies(self) -> list[float]:
        """``(T,)`` accuracy over all seen test samples after each task ``t``.

        ``Σ_{j≤t} correct[t][j] / Σ_{j≤t} total[t][j]``: sample-weighted over tasks ``0 … t``.
        """
        return [sum(c) / sum(n) for c, n in zip(self.correct, self.total)]

    @property
    def final_accuracy(self) -> float:
        """Sample-weighted accuracy over all seen test samples after the last task (the paper's number)."""
        return self.incremental_accuracies[self._last_task()]

    @property
    def final_mean_accuracy(self) -> float:
        """Per-task mean after the last task: ``(1/T) Σ_j A[T−1, j]``."""
        return float(np.mean(self.accuracy_matrix[self._last_task()]))

    @property
    def average_incremental_accuracy(self) -> float:
        """``(1/T) Σ_t acc_t``, ``acc_t`` the accuracy over all seen test samples after task ``t``."""
        self._last_task()  # raises when nothing is recorded
        return float(np.mean(self.incremental_accuracies))

    @property
    def forgetting_per_task(self) -> list[float]:
        """``(T,)`` forgetting after each task ``t``: ``(1/t) Σ_{j<t} (max_{j≤t'≤t} A[t', j] − A[t, j])``.

        Each term is ``≥ 0`` because ``t' = t`` is included. NaN for ``t = 0`` (no earlier task).
        """
        matrix = self.accuracy_matrix
        forgetting = []
        for t in range(self.num_tasks):
            drops = [np.max(matrix[j : t + 1, j]) - matrix[t, j] for j in range(t)]
            forgetting.append(float(np.mean(drops)) if drops else math.nan)
        return forgetting

    @property
    def forgetting(self) -> float:
        """Forgetting after the last task (see [`forgetting_per_task`]); NaN with a single task."""
        return self.forgetting_per_task[self._last_task()]

    @property
    def backward_transfer(self) -> float:
        """``BWT = (1/(T−1)) Σ_{j<T−1} (A[T−1, j] − A[j, j])``; NaN with a single task."""
        last = self._last_task()
        if last == 0:
            return math.nan
        matrix = self.accuracy_matrix
        return float(np.mean([matrix[last, j] - matrix[j, j] for j in range(last)]))

    def summary(self, json_safe: bool = False) -> dict[str, float | None]:
        """The scalar metrics of the last task, as fractions, keyed by property name (e.g. for `Trainer.log`).

        ``json_safe``: ``None`` instead of NaN where a metric is undefined (forgetting with one task), for strict JSON.
        """
        values = {
            "final_accuracy": self.final_accuracy,
            "final_mean_accuracy": self.final_mean_accuracy,
            "average_incremental_accuracy": self.average_incremental_accuracy,
            "forgetting": self.forgetting,
            "backward_transfer": self.backward_transfer,
        }
        return {k: None if json_safe and math.isnan(v) else v for k, v in values.items()}

    def format_table(self) -> str:
        """Plain-text table of ``A`` in percent (rows: after task ``t``; columns: task ``j``) and the summary."""
        last = self._last_task()
        matrix = 100 * self.accuracy_matrix
        seen = [100 * accuracy for accuracy in self.incremental_accuracies]
        width = max(6, len(f"task {last}"))
        header = " ".join(f"{f'task {j}':>{width}}" for j in range(self.num_tasks))
        lines = [
            "Accuracy (%) on the test data of task j (columns) after training task t (rows), tasks from 0",
            f"after task | {header} | all seen",
            f"{'-' * 11}+{'-' * (len(header) + 2)}+{'-' * 9}",
        ]
        for t in range(self.num_tasks):
            cells = " ".join(f"{matrix[t, j]:>{width}.2f}" if j <= t else " " * width for j in range(self.num_tasks))
            lines.append(f"{t:>10} | {cells} | {seen[t]:>8.2f}")
        summary = {
            "final accuracy (sample-weighted)": _percent(self.final_accuracy),
            "final accuracy (mean over tasks)": _percent(self.final_mean_accuracy),
            "average incremental accuracy": _percent(self.average_incremental_accuracy),
            f"forgetting (after task {last})": _percent(self.forgetting),
            "backward transfer (BWT)": _percent(self.backward_transfer, signed=True),
        }
        label_width = max(len(label) for label in summary)
        lines.append("")
        lines.extend(f"{label:<{label_width}} : {value}" for label, value in summary.items())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, list[list[int]]]:
        """JSON-safe ``{"correct": ..., "total": ...}`` (ragged lists of ints); [`from_dict`] inverts it."""
        return {"correct": [list(row) for row in self.correct], "total": [list(row) for row in self.total]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualMetrics:
        """Rebuild from [`to_dict`] output."""
        if set(data) != {"correct", "total"}:
            raise ValueError(f"Expected exactly the keys `correct` and `total`, got {sorted(data)}.")
        return cls(correct=data["correct"], total=data["total"])

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the counts ([`to_dict`]) and what they give — the accuracy matrix and the accuracy over all seen
        classes after every task (fractions, ``null`` above the diagonal), the summary metrics (``null`` where
        undefined) — as JSON, atomically (temporary file, fsync, rename); returns the path."""
        matrix = [[None if math.isnan(v) else float(v) for v in row] for row in self.accuracy_matrix]
        data = {
            **self.to_dict(),
            "accuracy_matrix": matrix,
            "incremental_accuracies": [float(v) for v in self.incremental_accuracies],
            **self.summary(json_safe=True),
        }
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
        return write_atomically(path, text.encode("utf-8"))

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> ContinualMetrics:
        """Read a file written by [`save_json`] (the counts; the rest follows from them)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict({key: data[key] for key in ("correct", "total")})

    def _last_task(self) -> int:
        if self.num_tasks == 0:
            raise ValueError("No task has been recorded yet: call `record_task` first.")
        return self.num_tasks - 1


def count_correct(
    predicted_class_ids: Any,
    true_class_ids: Any,
    task_of_class: Mapping[int, int] | Sequence[int] | np.ndarray,
    num_tasks_seen: int,
) -> tuple[list[int], list[int]]:
    """Per-task correct and sample counts of one evaluation, for [`ContinualMetrics.record_task`].

    Args:
        predicted_class_ids: ``(N,)`` integer global class ids predicted (argmax over all seen classes);
            numpy arrays, CPU tensors or lists.
        true_class_ids: ``(N,)`` integer global class ids of the labels.
        task_of_class: task index of every class id, as a mapping or an array indexed by class id.
        num_tasks_seen: number of tasks trained so far (``t + 1``); every label must belong to one of them.

    Returns:
        ``(correct, total)``, two lists of ``num_tasks_seen`` ints, indexed by the task of the *label*.
    """
    predicted = np.asarray(predicted_class_ids)
    true = np.asarray(true_class_ids)
    if predicted.ndim != 1 or predicted.shape != true.shape:
        raise ValueError(
            "`predicted_class_ids` and `true_class_ids` must be 1-D with the same length, "
            f"got shapes {predicted.shape} and {true.shape}."
        )
    if true.size and not (np.issubdtype(predicted.dtype, np.integer) and np.issubdtype(true.dtype, np.integer)):
        raise ValueError(
            f"Class ids must be integers, got dtypes {predicted.dtype} (`predicted_class_ids`) and {true.dtype} "
            "(`true_class_ids`)."
        )
    if num_tasks_seen < 1:
        raise ValueError(f"`num_tasks_seen` must be ≥ 1, got {num_tasks_seen}.")
    true = true.astype(np.int64)
    if isinstance(task_of_class, Mapping):
        missing = sorted(set(true.tolist()) - set(task_of_class))
        if missing:
            raise ValueError(f"Classes {missing[:10]} of `true_class_ids` are missing from `task_of_class`.")
        tasks = np.array([task_of_class[c] for c in true.tolist()], dtype=np.int64)
    else:
        lookup = np.asarray(task_of_class, dtype=np.int64)
        if true.size and (true.min() < 0 or true.max() >= lookup.shape[0]):
            raise ValueError(
                f"`true_class_ids` must lie in [0, {lookup.shape[0]}) to index `task_of_class`, "
                f"got range [{true.min()}, {true.max()}]."
            )
        tasks = lookup[true]
    unseen = np.unique(tasks[(tasks < 0) | (tasks >= num_tasks_seen)])
    if unseen.size:
        raise ValueError(
            f"`true_class_ids` hold classes of tasks {unseen.tolist()[:10]}, but only tasks 0 … "
            f"{num_tasks_seen - 1} have been seen (`num_tasks_seen`={num_tasks_seen})."
        )
    total = np.bincount(tasks, minlength=num_tasks_seen)
    correct = np.bincount(tasks[predicted == true], minlength=num_tasks_seen)
    return correct.tolist(), total.tolist()


def _lower_part(name: str, row: Any, t: int) -> list[Any]:
    """Entries ``0 … t`` of row ``t``; the ones after must be NaN (square-array input)."""
    values = list(row)
    for value in values[t + 1 :]:
        if not (isinstance(value, (float, np.floating)) and math.isnan(value)):
            raise ValueError(f"`{name}[{t}]` must have {t + 1} entries (NaN allowed after them), got {values}.")
    return values[: t + 1]


def _parse_row(name: str, row: Sequence[Any], t: int) -> list[int]:
    """Row ``t`` as ``t + 1`` non-negative Python ints."""
    values = list(row)
    if len(values) != t + 1:
        raise ValueError(
            f"`{name}` for task {t} must have one entry per task seen so far ({t + 1}), got {len(values)}."
        )
    counts = []
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"`{name}` for task {t} must hold counts, got {value!r}.")
        if not (math.isfinite(value) and float(value).is_integer() and value >= 0):
            raise ValueError(f"`{name}` for task {t} must hold non-negative whole counts, got {value!r}.")
        counts.append(int(value))
    return counts


def _check_counts(correct: list[int], total: list[int], t: int) -> None:
    for j, (c, n) in enumerate(zip(correct, total)):
        if n == 0:
            raise ValueError(f"Task {j} has no test samples in the evaluation after task {t} (`total` is 0).")
        if c > n:
            raise ValueError(f"After task {t}, task {j} has more correct predictions ({c}) than samples ({n}).")


def _percent(fraction: float, signed: bool = False) -> str:
    if math.isnan(fraction):
        return "n/a"
    return f"{100 * fraction:+.2f}%" if signed else f"{100 * fraction:.2f}%"
