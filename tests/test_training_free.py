# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Classifiers that train nothing, fitted task by task on fixed features, against independent numpy references."""

import numpy as np
import pytest
import torch

from peft_nsp.continual import NearestClassMean, fit_tasks_on_features
from peft_nsp.tuner import AnalyticClassifier


TASKS = [[3, 1], [0, 4], [2, 5]]  # global class ids in a shuffled order, as `split_classes` gives them


def clustered(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Six overlapping Gaussian classes in 8 dimensions: accuracies well below 100 %, so counts are informative."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)) * 1.2
    labels = torch.arange(6).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), 8, generator=generator), labels


def reference_matrix(predict, train_x, train_y, test_x, test_y) -> list[list[int]]:
    """``correct[t][j]`` by brute force: ``predict(seen_classes, train rows, test rows)`` → predicted global ids."""
    correct = []
    for t in range(len(TASKS)):
        seen = [c for task in TASKS[: t + 1] for c in task]
        rows = np.isin(train_y, seen)
        evaluated = np.isin(test_y, seen)
        predicted = predict(seen, train_x[rows], train_y[rows], test_x[evaluated])
        hits = predicted == test_y[evaluated]
        correct.append([int(hits[np.isin(test_y[evaluated], TASKS[j])].sum()) for j in range(t + 1)])
    return correct


def cosine_nearest_mean(seen, x, y, queries):
    means = np.stack([x[y == c].mean(0) for c in seen])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return np.array(seen)[np.argmax(queries @ means.T / np.linalg.norm(queries, axis=1, keepdims=True), axis=1)]


def ridge(ridge_value):
    def predict(seen, x, y, queries):
        targets = (y[:, None] == np.array(seen)[None]).astype(np.float64)
        weight = np.linalg.solve(x.T @ x + ridge_value * np.eye(x.shape[1]), x.T @ targets)
        return np.array(seen)[np.argmax(queries @ weight, axis=1)]

    return predict


@pytest.mark.parametrize(
    "make, reference",
    [
        (NearestClassMean, cosine_nearest_mean),
        (lambda: AnalyticClassifier(8, projection_size=0, ridge=3.0), ridge(3.0)),
    ],
    ids=["nearest-class-mean", "ridge"],
)
def test_the_accuracy_matrix_is_the_brute_force_one(make, reference):
    (train_x, train_y), (test_x, test_y) = clustered(40, seed=1), clustered(30, seed=2)
    metrics = fit_tasks_on_features(make(), TASKS, (train_x, train_y), {"test": (test_x, test_y)})["test"]
    expected = reference_matrix(reference, *(t.double().numpy() for t in (train_x, train_y, test_x, test_y)))
    assert metrics.correct == expected
    assert metrics.total == [[60] * (t + 1) for t in range(len(TASKS))]
    assert 0 < sum(map(sum, expected)) < sum(map(sum, metrics.total))  # neither trivial nor empty


def test_several_evaluation_sets_are_scored_by_the_same_fits():
    train, test = clustered(20, seed=3), clustered(10, seed=4)
    both = fit_tasks_on_features(NearestClassMean(), TASKS, train, {"test": test, "validation": train})
    alone = fit_tasks_on_features(NearestClassMean(), TASKS, train, {"validation": train})
    assert both["validation"].correct == alone["validation"].correct
    assert both["test"].total == [[20] * (t + 1) for t in range(len(TASKS))]


def test_nearest_class_mean_refuses_bad_tasks_and_changes_nothing():
    head = NearestClassMean()
    with pytest.raises(ValueError, match="add a task"):
        head.fit_task(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    head.add_task(2)
    with pytest.raises(ValueError, match="every column 0 … 1 needs samples"):
        head.fit_task(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="no other column"):
        head.fit_task(torch.randn(3, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN/Inf"):
        head.fit_task(torch.tensor([[0.0, float("nan"), 1.0], [1.0, 1.0, 1.0]]), torch.tensor([0, 1]))
    assert head.prototypes == []
    with pytest.raises(ValueError, match="before adding another"):
        head.add_task(2)
    head.fit_task(torch.eye(3)[:2], torch.tensor([0, 1]))
    torch.testing.assert_close(head(torch.eye(3)), torch.eye(3)[:, :2])
