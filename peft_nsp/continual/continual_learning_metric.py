# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The class-incremental metrics as an `evaluate` metric module shipped inside the package (no Hub access).

This file is both a module of the package and an `evaluate` metric script: [`load_continual_metric`]
passes its own path to ``evaluate.load``, which copies the file into the modules cache
(``HF_MODULES_CACHE``, by default ``~/.cache/huggingface/modules``) and imports the copy as a module of its
own. Hence the rules for this file:

* absolute imports only (``from peft_nsp.continual.metrics import ...``): the copy is not part of the
  package, so relative imports would fail;
* ``import evaluate``, never ``from evaluate import Metric``: ``evaluate`` picks the *first* concrete
  ``EvaluationModule`` subclass in the module's namespace as the metric, and ``evaluate.Metric`` itself is
  concrete;
* top-level ``import`` / ``from ... import`` lines must name installed libraries (``evaluate`` checks each
  with ``importlib.import_module``; lines inside functions are not inspected).

Loading a local ``.py`` path goes through ``evaluate``'s ``LocalEvaluationModuleFactory``, which reads,
hashes and copies the file and imports the libraries named above; nothing is requested from the network
(the Hub, and the download counter, are only involved for metric *names* such as ``"accuracy"``), so no
``HF_HUB_OFFLINE`` / ``HF_EVALUATE_OFFLINE`` setting is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np

from peft_nsp.continual.metrics import ContinualMetrics, count_correct


CONTINUAL_METRIC_PATH = Path(__file__).resolve()
"""This file: the metric script that [`load_continual_metric`] hands to ``evaluate.load``."""

_CITATION = """\
@inproceedings{lu2024visual,
  title     = {Visual Prompt Tuning in Null Space for Continual Learning},
  author    = {Lu, Yue and Zhang, Shizhou and Cheng, De and Xing, Yinghui and Wang, Nannan and Wang, Peng
               and Zhang, Yanning},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {37},
  year      = {2024}
}
"""

_DESCRIPTION = """\
Class-incremental continual-learning metrics. The model is trained on a sequence of tasks (disjoint sets of
classes); after training task t it is evaluated on the test data of every task j <= t, predicting over all
classes seen so far. A[t, j] is the accuracy on the test data of task j after training task t (tasks counted
from 0). From A and the correct/sample counts behind it come the final accuracy (sample-weighted over all
seen test samples after the last task, the number reported in the paper), the final mean accuracy (mean of
the last row of A), the average incremental accuracy (mean over t of the sample-weighted accuracy after task
t), the forgetting (mean over earlier tasks of the drop from their best accuracy) and the backward transfer
(BWT, mean of A[T-1, j] - A[j, j]). Accuracies are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): global class id predicted for each test sample (argmax over all the
        classes seen at that evaluation).
    references (`list` of `int`): true global class id of each test sample.
    after_task (`list` of `int`): index (from 0) of the task just trained when the prediction was made.
        Every evaluation 0 ... T-1 must be present (T-1 the largest value given), and evaluation t must
        hold test samples of every task j <= t and of no later task.
    tasks (`list` of `list` of `int`): the class ids of each task, in task order (passed to `compute`).
        Evaluations may cover only the first T tasks (a run in progress).
    previous (`dict`, *optional*): `{"correct": ..., "total": ...}` counts of evaluations 0 ... P-1 done
        earlier (e.g. the `correct`/`total` this metric returned before a resumed run); the predictions then
        hold evaluations P ... T-1 (passed to `compute`).
Returns:
    accuracy_matrix (`list` of `list` of `float`): (T, T) A[t][j]; `None` above the diagonal (j > t).
    correct (`list` of `list` of `int`): ragged correct[t][j], j <= t.
    total (`list` of `list` of `int`): ragged total[t][j], j <= t.
    incremental_accuracies (`list` of `float`): sample-weighted accuracy over all seen test samples after
        each task t.
    final_accuracy (`float`): sample-weighted accuracy over all seen test samples after the last task.
    final_mean_accuracy (`float`): (1/T) sum_j A[T-1][j].
    average_incremental_accuracy (`float`): mean of `incremental_accuracies`.
    forgetting (`float` or `None`): (1/(T-1)) sum_{j<T-1} (max_{j<=t'<=T-1} A[t'][j] - A[T-1][j]);
        `None` with a single task.
    backward_transfer (`float` or `None`): (1/(T-1)) sum_{j<T-1} (A[T-1][j] - A[j][j]); `None` with a
        single task.
    accuracy (`float`): overall accuracy of the last evaluation (the same number as `final_accuracy`, under
        the usual key, e.g. for `metric_for_best_model="accuracy"`).
Examples:
    >>> from peft_nsp.continual.continual_learning_metric import load_continual_metric
    >>> metric = load_continual_metric()
    >>> results = metric.compute(
    ...     predictions=[0, 1, 0, 3, 2],
    ...     references=[0, 1, 0, 1, 2],
    ...     after_task=[0, 0, 1, 1, 1],
    ...     tasks=[[0, 1], [2, 3]],
    ... )
    >>> results["accuracy_matrix"]
    [[1.0, None], [0.5, 1.0]]
    >>> results["final_accuracy"], results["forgetting"], results["backward_transfer"]
    (0.6666666666666666, 0.5, -0.5)
"""


class ContinualLearningMetric(evaluate.Metric):
    """Accuracy matrix, final accuracy, forgetting, BWT and average incremental accuracy of a class-incremental
    run, from the predictions of every evaluation (see [`peft_nsp.continual.ContinualMetrics`])."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "after_task": datasets.Value("int64"),
                }
            ),
            format="numpy",
            reference_urls=["https://huggingface.co/papers/2406.05658"],
        )

    def _compute(
        self,
        predictions: Any,
        references: Any,
        after_task: Any,
        tasks: Sequence[Sequence[int]] | None = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        after_task = np.asarray(after_task, dtype=np.int64)
        if not (predictions.shape == references.shape == after_task.shape and predictions.ndim == 1):
            raise ValueError(
                "`predictions`, `references` and `after_task` must be 1-D with the same length, got shapes "
                f"{predictions.shape}, {references.shape} and {after_task.shape}."
            )
        if predictions.size == 0:
            raise ValueError("No predictions to evaluate.")
        task_of_class = _task_of_class(tasks)
        metrics = ContinualMetrics.from_dict(previous) if previous else ContinualMetrics()
        num_evaluations = _check_evaluations(after_task, num_tasks=len(tasks), first=metrics.num_tasks)

        for t in range(metrics.num_tasks, num_evaluations):
            rows = after_task == t
            correct, total = count_correct(predictions[rows], references[rows], task_of_class, num_tasks_seen=t + 1)
            metrics.record_task(t, correct, total)

        matrix = metrics.accuracy_matrix
        return {
            "accuracy_matrix": [
                [float(matrix[t, j]) if j <= t else None for j in range(metrics.num_tasks)]
                for t in range(metrics.num_tasks)
            ],
            "correct": [list(row) for row in metrics.correct],
            "total": [list(row) for row in metrics.total],
            "incremental_accuracies": [float(accuracy) for accuracy in metrics.incremental_accuracies],
            "final_accuracy": _json_float(metrics.final_accuracy),
            "final_mean_accuracy": _json_float(metrics.final_mean_accuracy),
            "average_incremental_accuracy": _json_float(metrics.average_incremental_accuracy),
            "forgetting": _json_float(metrics.forgetting),
            "backward_transfer": _json_float(metrics.backward_transfer),
            "accuracy": _json_float(metrics.incremental_accuracies[-1]),
        }


def load_continual_metric(**load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load [`ContinualLearningMetric`] with ``evaluate.load`` from the file shipped in the package.

    No network access: ``evaluate.load`` is given the path of this ``.py`` file, so it copies the script into
    its modules cache and imports it, without looking anything up on the Hub.

    Args:
        load_kwargs: forwarded to ``evaluate.load`` (e.g. ``keep_in_memory=True``, ``cache_dir``,
            ``experiment_id``, ``num_process`` / ``process_id`` for distributed evaluation).

    Example:

    ```python
    >>> metric = load_continual_metric(keep_in_memory=True)
    >>> for t in range(num_tasks):
    ...     train(t)
    ...     for batch in test_batches_of_tasks_up_to(t):
    ...         metric.add_batch(predictions=preds, references=labels, after_task=[t] * len(labels))
    >>> results = metric.compute(tasks=class_ids_per_task)
    >>> results["final_accuracy"], results["forgetting"]
    ```
    """
    if "path" in load_kwargs:
        raise TypeError("`load_continual_metric` loads its own script; do not pass `path`.")
    return evaluate.load(str(CONTINUAL_METRIC_PATH), **load_kwargs)


def _task_of_class(tasks: Sequence[Sequence[int]] | None) -> dict[int, int]:
    """``{class id: task index}`` from the class ids of each task; checks the tasks are non-empty and disjoint."""
    if tasks is None:
        raise ValueError("`compute` needs `tasks`: the list of class ids of each task, in task order.")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError(f"`tasks` must be a non-empty list of lists of class ids, got {tasks!r}.")
    task_of_class: dict[int, int] = {}
    for j, classes in enumerate(tasks):
        ids = np.asarray(classes)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`tasks[{j}]` must be a non-empty list of integer class ids, got {classes!r}.")
        for class_id in ids.tolist():
            if class_id in task_of_class:
                raise ValueError(
                    f"Class {class_id} is in task {task_of_class[class_id]} and in task {j}: tasks must be disjoint."
                )
            task_of_class[class_id] = j
    return task_of_class


def _check_evaluations(after_task: np.ndarray, num_tasks: int, first: int = 0) -> int:
    """Number of evaluations ``T``; checks ``after_task`` holds exactly ``first … T−1`` and ``T ≤ num_tasks``
    (``first``: evaluations counted in `previous`)."""
    present = np.unique(after_task)
    if present[0] < first:
        raise ValueError(
            f"`after_task` must be ≥ {first} (task indices from 0; {first} earlier evaluations are in `previous`), "
            f"got {present[present < first].tolist()}."
        )
    num_evaluations = int(present[-1]) + 1
    if num_evaluations > num_tasks:
        raise ValueError(
            f"`after_task` goes up to {num_evaluations - 1}, but `tasks` has only {num_tasks} tasks "
            f"(0 … {num_tasks - 1})."
        )
    missing = sorted(set(range(first, num_evaluations)) - set(present.tolist()))
    if missing:
        raise ValueError(
            f"Evaluations must be contiguous from 0: no predictions with `after_task` in {missing} "
            f"(got evaluations {present.tolist()})."
        )
    return num_evaluations


def _json_float(value: float) -> float | None:
    """``value`` as a Python float, ``None`` where NaN (undefined, e.g. forgetting with a single task)."""
    return None if math.isnan(value) else float(value)
