# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""PNG plots of a [`ContinualMetrics`]: the accuracy matrix as a heat map and the accuracy curve.

Figures are drawn with ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg``, never through ``pyplot``, so the
global backend and figure registry of the caller stay untouched. Files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._io import write_atomically
from .metrics import ContinualMetrics


_DPI = 150
#: Above this many tasks the heat map drops its per-cell numbers (unreadable, and most of the drawing time) and
#: keeps its size and tick count bounded, so a stage takes as long to plot after task 50 as after task 5.
ANNOTATED_TASKS = 12
_MAX_TICKS = 20


def plot_accuracy_matrix(metrics: ContinualMetrics, path: str | os.PathLike, title: str | None = None) -> Path:
    """Heat map of ``A[t, j]`` in percent (rows: after task ``t``; columns: task ``j``); every cell annotated up to
    [`ANNOTATED_TASKS`] tasks.

    Args:
        metrics: at least one recorded task.
        path: PNG file to write (parent directories are created).
        title: optional figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    _check_recorded(metrics, "metrics")
    matrix = 100 * metrics.accuracy_matrix
    num_tasks = metrics.num_tasks
    side = max(3.5, 0.5 * min(num_tasks, ANNOTATED_TASKS) + 1.5)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    if num_tasks <= ANNOTATED_TASKS:
        font_size = min(9.0, max(5.0, 140.0 / num_tasks))
        for t in range(num_tasks):
            for j in range(t + 1):
                red, green, blue, _ = image.cmap(image.norm(matrix[t, j]))
                luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
                color = "black" if luminance > 0.5 else "white"
                axes.text(j, t, f"{matrix[t, j]:.1f}", ha="center", va="center", fontsize=font_size, color=color)
    ticks = np.arange(0, num_tasks, max(1, -(-num_tasks // _MAX_TICKS)))
    axes.set_xticks(ticks, [str(j) for j in ticks])
    axes.set_yticks(ticks, [str(t) for t in ticks])
    axes.set_xlabel("test data of task j")
    axes.set_ylabel("after training task t")
    if title is not None:
        axes.set_title(title)
    return _save_png(figure, path)


def plot_accuracy_curve(
    metrics: ContinualMetrics,
    path: str | os.PathLike,
    label: str | None = None,
    others: Mapping[str, ContinualMetrics] | None = None,
    title: str | None = None,
) -> Path:
    """Accuracy over all seen test samples (sample-weighted, percent) against the number of tasks learned.

    Args:
        metrics: the run to plot, at least one recorded task.
        path: PNG file to write (parent directories are created).
        label: legend entry for ``metrics`` (e.g. ``"VPT-NSP²"``).
        others: more runs drawn on the same axes, keyed by legend entry (e.g. ``{"VPT-Seq": seq_metrics}``).
        title: optional figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    others = others or {}
    if label in others:
        raise ValueError(f"`label` {label!r} is also a key of `others`.")
    _check_recorded(metrics, "metrics")
    for name, run in others.items():
        _check_recorded(run, f"others[{name!r}]")
    runs = {label: metrics, **others}
    return plot_curves({name: run.incremental_accuracies for name, run in runs.items()}, path, title)


def plot_curves(
    curves: Mapping[str | None, Sequence[float]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Accuracy fractions after each task, one line per entry (e.g. mean curves of several methods), in percent.

    Args:
        curves: legend entry (``None``: no legend) → accuracy after task 1, 2, … (fractions in [0, 1]).
        path: PNG file to write (parent directories are created).
        title: optional figure title.
    """
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, accuracies in curves.items():
        axes.plot(np.arange(1, len(accuracies) + 1), 100 * np.asarray(accuracies), marker="o", label=name)
    longest = max(len(accuracies) for accuracies in curves.values())
    axes.set_xticks(np.arange(1, longest + 1))
    axes.set_xlabel("number of tasks learned")
    axes.set_ylabel("accuracy on all seen classes (%)")
    axes.grid(alpha=0.3)
    if any(name is not None for name in curves):
        axes.legend(fontsize=8)
    if title is not None:
        axes.set_title(title)
    return _save_png(figure, path)


def _check_recorded(metrics: ContinualMetrics, name: str) -> None:
    if metrics.num_tasks == 0:
        raise ValueError(f"`{name}` has no recorded task to plot.")


def _save_png(figure: Figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return write_atomically(path, buffer.getvalue())
