# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The class-incremental loop: one [`NSPTrainer`] per task, evaluation with the `evaluate` metric, resumable stages.

The run's layout on disk and its record are [`peft_nsp.continual.stages`]'. Only the main process writes.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import gc
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from filelock import FileLock, Timeout
from peft import PeftModel
from transformers import PreTrainedModel, TrainerCallback

from ..trainer import NSPConfig, NSPTrainer
from ..tuner.config import VPTNSPConfig
from .card import TEMPLATE_PATH, write_model_card
from .class_names import readable_class_names
from .continual_learning_metric import load_continual_metric
from .data import ImageTransform, find_columns, present_class_names, select_classes, split_classes
from .metrics import ContinualMetrics
from .plots import plot_accuracy_curve, plot_accuracy_matrix
from .stages import (
    CURVE_PLOT,
    LOCK_FILE,
    MATRIX_PLOT,
    METRICS_FILE,
    RunRecord,
    hub_unreachable_error,
    last_complete_checkpoint,
    method_name,
    read_progress,
    read_record,
    stage_dir,
    task_class_ids,
    training_dir,
    verify_stage,
    write_stage,
)


logger = logging.getLogger(__name__)

#: Adapter settings recorded with the run (λ is recorded as the one in effect).
_ADAPTER_SETTINGS = (
    "prompt_length",
    "prompt_layers",
    "prompt_init",
    "threshold_mode",
    "threshold_offset1",
    "threshold_offset2",
    "times_factor1",
    "times_factor2",
    "eta1",
    "eta2",
    "task_weighting",
    "projected_layers",
    "head_init",
    "classifier",
    "text_templates",
    "class_statistics",
    "analytic_projection_size",
    "analytic_ridge",
    "analytic_ridge_grid",
    "analytic_seed",
)
#: Training settings that shaped what the stage holds: the heads' logits are their outputs divided by the temperature.
_FIXED_TRAINING_SETTINGS = ("temperature",)
#: Adapter settings the tuner reads again for every task, so a resume may change them: η and the thresholds (the
#: null-space fold at the end of a task), `projected_layers` (its training), `head_init`/`text_templates` (its head).
#: The others shaped the prompts, statistics or heads the stage already holds.
_CHANGEABLE_ADAPTER_SETTINGS = (
    "threshold_mode",
    "threshold_offset1",
    "threshold_offset2",
    "times_factor1",
    "times_factor2",
    "eta1",
    "eta2",
    "projected_layers",
    "head_init",
    "text_templates",
)


@dataclass
class ContinualResult:
    """What [`run_class_incremental`] returns."""

    model: PeftModel
    metrics: ContinualMetrics
    tasks: list[list[int]]
    """The dataset's class ids of every task, in training order (the class order cut into tasks)."""
    output_dir: Path
    record: RunRecord
    """The run record (class names per task, settings, metrics), as in every stage's ``sequence.json``."""


def run_class_incremental(
    base_model: PreTrainedModel,
    peft_config: VPTNSPConfig,
    args: NSPConfig,
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_tasks: int,
    train_transform: ImageTransform,
    eval_transform: ImageTransform | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    class_order: Sequence[int] | None = None,
    joint: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    run_info: Mapping[str, Any] | None = None,
    on_stage_saved: Callable[[Path, int], None] | None = None,
    tokenizer: Any = None,
    class_names: Sequence[str] | None = None,
    processing_class: Any = None,
    continue_from: str | os.PathLike | None = None,
) -> ContinualResult:
    """Train a class-incremental task sequence with VPT-NSP² (or a baseline) and measure forgetting.

    Classes are shuffled with ``args.seed`` (or taken from ``class_order``) and cut into ``num_tasks`` equal tasks.
    Each task is one [`NSPTrainer`] (head, training with the projection, null-space statistics, classifier
    alignment when ``args.classifier_alignment``), then an evaluation on the test data of every task seen (the
    `evaluate` metric of `load_continual_metric`) and a stage on disk. Re-running the same call resumes after the
    last finished stage, or from the last complete Trainer checkpoint inside a task, and ends as an uninterrupted
    run would; a resume with other settings is refused unless ``args.resume_with_changed_settings``. Then the
    new settings apply to the whole of the first unfinished task and on (its training and its null-space fold: a
    task interrupted inside restarts from its beginning), and the record lists them from that task; settings that
    shaped the stage's prompts, statistics or heads (e.g. ``prompt_length``) are refused.

    Args:
        base_model: a fresh supported model (prompts and heads are added here, or restored when resuming).
        peft_config: the adapter configuration (ignored when resuming or continuing).
        args: training arguments; ``output_dir`` holds the whole run. ``projection=False`` with
            ``ln_loss_weight=0`` is VPT-Seq.
        train_dataset / test_dataset: datasets with an `Image` column and a `ClassLabel` column (same names).
        num_tasks: T, the tasks of this run (after those of ``continue_from``).
        train_transform: images → pixel values for training (augmentation goes here).
        eval_transform: images → pixel values for statistics and evaluation (default: ``train_transform``).
        image_column / label_column: column names (default: found by their features).
        class_order: a permutation of the dataset's (new) class ids, or of a subset of them (the other classes are
            neither trained nor tested), to use instead of the seeded shuffle.
        joint: train one task on all classes (the upper bound); the same metrics, one row.
        callbacks: extra Trainer callbacks for every task.
        run_info: JSON-serialisable facts about the run stored in every stage's record (e.g.
            ``{"benchmark": "cifar100-10", "dataset": "uoft-cs/cifar100"}``; model cards read them).
        on_stage_saved: called on the main process with ``(stage_dir, task)`` once a stage is on disk and the
            progress pointer names it (e.g. to push it to the Hub).
        tokenizer: ``classifier="text"`` on `CLIPModel`/`SiglipModel`: the text tower's tokenizer.
        class_names: ``classifier="text"``: the prompt name of every class id of the dataset. Default: the
            `ClassLabel` names through [`readable_class_names`] (ImageNet-R WordNet ids → names, ``_`` → space).
        processing_class: the image processor, saved in every stage (so `pipeline` finds it).
        continue_from: a finished adapter to continue with the dataset's *other* classes: a stage folder, or a Hub
            repository as ``"user/repo@task-3"``. Its tasks and accuracy rows come first; ``test_dataset`` must
            hold its classes too (the accuracy matrix covers every task).
    """
    eval_transform = eval_transform or train_transform
    processing_class = processing_class or _base_model_processor(base_model)
    image_column, label_column = find_columns(
        train_dataset, image_column or args.image_column, label_column or args.label_column, "train_dataset"
    )
    find_columns(test_dataset, image_column, label_column, "test_dataset")
    names = list(train_dataset.features[label_column].names)
    test_names = list(test_dataset.features[label_column].names)
    if test_names != names:
        raise ValueError(
            f"`train_dataset` and `test_dataset` must share their `ClassLabel` ({len(names)} vs {len(test_names)} "
            "names, or another order)."
        )
    text_names = dict(zip(names, class_names if class_names is not None else readable_class_names(names)))
    if len(text_names) != len(names):
        raise ValueError(f"Got {len(class_names)} `class_names` for {len(names)} classes.")

    source_record, source_model = None, None
    if continue_from is not None:
        source_model, source_record = _load_source(base_model, continue_from)
    inherited = source_record.tasks if source_record else []
    known = {name for task in inherited for name in task}
    missing = sorted(known - set(names))
    if missing:
        raise ValueError(
            f"The datasets lack classes of the continued adapter: {missing[:10]}. A continued run measures every task, "
            "so `train_dataset`/`test_dataset` need the earlier classes (their test data) too."
        )
    new_ids = [i for i, name in enumerate(names) if name not in known]
    if class_order is not None:
        order = [int(c) for c in class_order]
        if len(set(order)) != len(order) or not set(order) <= set(new_ids):
            raise ValueError(
                f"`class_order` must list distinct new class ids of the dataset ({new_ids}), in training order: all "
                "of them, or the subset to train."
            )
        dataset_tasks = split_classes(len(order), num_tasks, args.seed, list(range(len(order))))
        dataset_tasks = [[order[i] for i in task] for task in dataset_tasks]
    else:
        dataset_tasks = [[new_ids[i] for i in task] for task in split_classes(len(new_ids), num_tasks, args.seed)]
    if joint:
        dataset_tasks = [[c for task in dataset_tasks for c in task]]
    planned = [*inherited, *[[names[c] for c in task] for task in dataset_tasks]]
    ids_of = {name: i for i, name in enumerate(names)}
    new_names = {name for task in planned[len(inherited) :] for name in task}
    untrainable = sorted(new_names - set(present_class_names(train_dataset, label_column)))
    if untrainable:
        raise ValueError(
            f"`train_dataset` has no samples of classes {untrainable[:10]}, which the task split includes: add their "
            "images, or drop them from the `ClassLabel` (e.g. select the other classes and `cast_column` to a "
            "`ClassLabel` without them)."
        )
    for task in planned:  # warns for classes without test data
        select_classes(test_dataset, label_column, [ids_of[n] for n in task], "test_dataset")

    state = PartialState()
    output_dir = Path(args.output_dir)
    lock = _lock_run(output_dir, state)
    try:
        record = read_progress(output_dir) if state.is_main_process else None
        record = broadcast_object_list([record])[0]
        settings = _settings(args, source_model.peft_config["default"] if source_model else peft_config)
        method = _method_of(settings, joint)
        if record is None:
            if source_model is not None:
                model, start = source_model, len(inherited)
                metrics = ContinualMetrics.from_dict(source_record.metrics)
            else:
                model, start, metrics = None, 0, ContinualMetrics()
            record = RunRecord(
                tasks=planned,
                seed=args.seed,
                method=method,
                joint=joint,
                finished_tasks=start,
                settings=settings,
                run_info=dict(run_info or {}),
                metrics=metrics.to_dict(),
                continued_from=None if continue_from is None else str(continue_from),
            )
        else:
            if record.tasks != planned:
                raise ValueError(
                    f"`{output_dir}` holds a run with another task split ({record.tasks[:3]}…); use a new `output_dir` "
                    "or the same seed/class order/num_tasks (and `continue_from`) to resume it."
                )
            previous_method = _method_of(_current_settings(record), joint)
            record, changed = _check_settings(record, settings, args, output_dir)
            start = record.finished_tasks
            if method != previous_method:
                record = dataclasses.replace(record, method=f"{record.method}, then {method} from task {start}")
            if state.is_main_process:
                _remove_stale_checkpoints(output_dir, start, restart=bool(changed))
            model = load_stage(base_model, stage_dir(output_dir, start - 1))
            _apply_adapter_changes(model.peft_config["default"], changed, args)
            metrics = ContinualMetrics.from_dict(record.metrics)
            logger.info("Resuming after task %d of %d from %s", start, len(planned), output_dir)
        metric = load_continual_metric()
        for task in range(start, len(planned)):  # NSPTrainer seeds each task's new weights with `seed + task`
            task_args = dataclasses.replace(
                args,
                output_dir=str(training_dir(output_dir, task)),
                push_to_hub=False,  # stages are what gets published
                image_column=image_column,
                label_column=label_column,
            )
            trainer = NSPTrainer(
                model if model is not None else base_model,
                task_args,
                train_dataset=select_classes(
                    train_dataset, label_column, [ids_of[n] for n in planned[task]], "train_dataset"
                ),
                peft_config=None if model is not None else copy.deepcopy(peft_config),
                processing_class=processing_class,
                train_transform=train_transform,
                eval_transform=eval_transform,
                task_classes=planned[task],
                tokenizer=tokenizer,
                text_names=text_names,
                callbacks=list(callbacks),
            )
            checkpoint = last_complete_checkpoint(task_args.output_dir) if state.is_main_process else None
            checkpoint = broadcast_object_list([checkpoint])[0]
            try:
                trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
            except Exception as error:  # safetensors raises its own `SafetensorError`, torch a `RuntimeError`
                _raise_if_disk_full(
                    error,
                    f"a checkpoint of task {task} under `{task_args.output_dir}`",
                    "a half-written checkpoint is set aside on the next run",
                )
                raise
            model = trainer.model
            seen = [ids_of[n] for t in planned[: task + 1] for n in t]
            output = trainer.predict(select_classes(test_dataset, label_column, seen, "test_dataset"))
            del trainer  # its dataloaders and state: a long run must not hold one per task
            gc.collect()
            if state.is_main_process:
                predicted = np.asarray(model.class_order())[np.asarray(output.predictions).argmax(-1)]
                result = metric.compute(
                    predictions=predicted,
                    references=output.label_ids,
                    after_task=np.full(len(predicted), task),
                    tasks=task_class_ids(planned[: task + 1]),
                    previous=metrics.to_dict(),
                )
                metrics = ContinualMetrics(correct=result["correct"], total=result["total"])
            metrics = ContinualMetrics.from_dict(broadcast_object_list([metrics.to_dict()])[0])
            record = dataclasses.replace(record, finished_tasks=task + 1, metrics=metrics.to_dict())
            _save_stage_everywhere(model, record, task, output_dir, processing_class, on_stage_saved, state)
        return ContinualResult(
            model=model,
            metrics=metrics,
            tasks=[[ids_of[n] for n in task] for task in planned],
            output_dir=output_dir,
            record=record,
        )
    finally:
        if lock is not None:
            lock.release()


def _save_stage_everywhere(
    model: PeftModel,
    record: RunRecord,
    task: int,
    output_dir: Path,
    processing_class: Any,
    on_stage_saved: Callable[[Path, int], None] | None,
    state: PartialState,
) -> None:
    """The main process writes the stage; every process learns whether it failed (none waits forever)."""
    failure = None
    if state.is_main_process:
        try:
            try:
                stage = write_stage(
                    output_dir, task, record, lambda folder: _stage_files(folder, model, record, processing_class)
                )
            except Exception as error:
                _raise_if_disk_full(
                    error, f"the stage of task {task} into `{output_dir}`", "the half-written stage folder was removed"
                )
                raise
            shutil.rmtree(training_dir(output_dir, task), ignore_errors=True)  # the stage supersedes them
            metrics = ContinualMetrics.from_dict(record.metrics)
            print(f"\nAfter task {task} (tasks 0–{len(record.tasks) - 1}):\n{metrics.format_table()}", flush=True)
            if on_stage_saved is not None:
                on_stage_saved(stage, task)
        except Exception as error:  # re-raised below, after every process has heard of it
            failure = error
    if broadcast_object_list([failure is not None])[0]:
        if failure is not None:
            raise failure
        raise RuntimeError(f"The main process failed while saving task {task}; see its error.")
    state.wait_for_everyone()


def load_stage(base_model: PreTrainedModel, folder: Path, revision: str | None = None) -> PeftModel:
    """The trainable model of a stage (a folder, or a Hub id with ``revision``), with errors that name it."""
    if os.path.isdir(folder):
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (Path(folder) / name).is_file():
                raise ValueError(
                    f"The stage `{folder}` has no `{name}`: it was damaged after it was written. Restore it (e.g. "
                    f"`python -m peft_nsp.hub materialize <repo> <new output_dir> --revision {Path(folder).name}`) "
                    "or start a new `output_dir`."
                )
        verify_stage(folder)
    try:
        return PeftModel.from_pretrained(base_model, str(folder), revision=revision, is_trainable=True)
    except ValueError as error:  # ours (the adapter does not fit) or PEFT's: already about this adapter
        raise ValueError(f"Loading the stage `{folder}` failed: {error}") from error
    except Exception as error:
        raise ValueError(
            f"Loading the stage `{folder}` failed ({type(error).__name__}: {error}): a file there is truncated or "
            "damaged. Restore the stage (its Hub revision, or a copy) or start a new `output_dir`."
        ) from error


#: errno → what ran out, and the texts by which torch (``unexpected pos 64 vs 0``) and safetensors (``File too large
#: (os error 27)``) report them when they raise no `OSError`.
_FULL_DISK = {
    errno.ENOSPC: ("No space left on the device", ("No space left on device", "os error 28", "unexpected pos")),
    errno.EDQUOT: ("The disk quota is exceeded", ("Disk quota exceeded", "os error 122")),
    errno.EFBIG: ("A file-size limit was reached (`ulimit -f`)", ("File too large", "os error 27")),
}


def _raise_if_disk_full(error: Exception, writing: str, leftover: str) -> None:
    """Name a full disk or a file-size limit as such, saying what is left behind; other errors pass."""
    for number, (reason, texts) in _FULL_DISK.items():
        if getattr(error, "errno", None) == number or any(text in str(error) for text in texts):
            raise OSError(
                number,
                f"{reason} while writing {writing} ({type(error).__name__}: {error}). Nothing finished is lost: the "
                f"last stage and `progress.json` are intact and {leftover}. Free space (or raise the limit) and "
                "re-run the same command to resume.",
            ) from error


def _base_model_processor(base_model: PreTrainedModel) -> Any:
    """The image processor saved in the base model's local folder; else a warning that stages will lack one."""
    source = Path(str(getattr(base_model.config, "_name_or_path", "") or ""))
    if (source / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(source)
    warnings.warn(
        "`run_class_incremental` got no `processing_class` and the base model's folder has no image processor: the "
        "stages will hold no `preprocessor_config.json`, so `pipeline(model=<stage>)` cannot load them. Pass "
        "`processing_class=AutoImageProcessor.from_pretrained(<model>)`.",
        stacklevel=3,
    )
    return None


def _stage_files(folder: Path, model: PeftModel, record: RunRecord, processing_class: Any) -> None:
    """Everything a stage holds besides its record: adapter (checked finite), processor, metrics, plots, card."""
    model.base_model.check_finite()
    model.save_pretrained(folder)
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)
    metrics = ContinualMetrics.from_dict(record.metrics)
    metrics.save_json(folder / METRICS_FILE)
    plot_accuracy_matrix(metrics, folder / MATRIX_PLOT)
    plot_accuracy_curve(metrics, folder / CURVE_PLOT, label=record.method)
    if TEMPLATE_PATH.is_file():
        write_model_card(folder)


def _settings(args: NSPConfig, peft_config: VPTNSPConfig) -> dict[str, Any]:
    values = {**args.recorded_settings(), **{name: getattr(peft_config, name) for name in _ADAPTER_SETTINGS}}
    if args.ln_loss_weight is None:
        values["ln_loss_weight"] = peft_config.ln_loss_weight
    return {key: (list(value) if isinstance(value, (list, tuple, set)) else value) for key, value in values.items()}


def _current_settings(record: RunRecord) -> dict[str, Any]:
    """The settings in effect at the end of the record: those the run started with, updated by every change."""
    current = {**record.settings}
    for change in record.settings_changes:
        current.update({name: values[1] for name, values in change["changed"].items()})
    return current


def _check_settings(
    record: RunRecord, settings: dict[str, Any], args: NSPConfig, output_dir: Path
) -> tuple[RunRecord, dict[str, list[Any]]]:
    """Refuse a resume whose settings differ from the run's, or record the change when it is allowed.

    Returns the record and the changes (``{name: [old, new]}``), which apply from task ``record.finished_tasks``.
    """
    current = _current_settings(record)
    changed = {name: [current.get(name), value] for name, value in settings.items() if current.get(name) != value}
    if not changed:
        return record, changed
    listed = "; ".join(f"`{name}`: {old!r} (run) → {new!r} (now)" for name, (old, new) in changed.items())
    task = record.finished_tasks
    fixed = [
        name
        for name in changed
        if name in _FIXED_TRAINING_SETTINGS or (name in _ADAPTER_SETTINGS and name not in _CHANGEABLE_ADAPTER_SETTINGS)
    ]
    if fixed:
        raise ValueError(
            f"`{output_dir}` holds a run with other settings: {listed}. {', '.join(f'`{n}`' for n in fixed)} cannot "
            "change on resume: the stage's prompts, null-space statistics and heads were built with the run's value. "
            "Resume with the run's value, or start a new `output_dir`."
        )
    if not args.resume_with_changed_settings:
        raise ValueError(
            f"`{output_dir}` holds a run with other settings: {listed}. Resume it with the same settings, start a new "
            f"`output_dir`, or pass `resume_with_changed_settings=True` to apply the new ones from task {task} on "
            "(recorded per task in the run record and the model card)."
        )
    logger.warning("Resuming %s with settings changed from task %d (recorded): %s", output_dir, task, listed)
    changes = [*record.settings_changes, {"task": task, "changed": changed}]
    return dataclasses.replace(record, settings_changes=changes), changed


def _apply_adapter_changes(config: VPTNSPConfig, changed: dict[str, list[Any]], args: NSPConfig) -> None:
    """Set the changed adapter settings on the resumed adapter's config, which the next tasks read (and save)."""
    for name, (_, value) in changed.items():
        if name in _CHANGEABLE_ADAPTER_SETTINGS or (name == "ln_loss_weight" and args.ln_loss_weight is None):
            setattr(config, name, value)


def _method_of(settings: dict[str, Any], joint: bool) -> str:
    """[`method_name`] of recorded settings (a record of peft-nsp 0.1 may lack some: their defaults)."""
    return method_name(
        settings.get("projection", True),
        joint,
        settings.get("classifier", "linear"),
        settings.get("classifier_alignment", False),
    )


def _remove_stale_checkpoints(output_dir: Path, start: int, restart: bool) -> None:
    """Remove the checkpoints of finished tasks (a run killed before it removed them) and, when ``restart`` (the
    settings changed), those of task ``start``: the task then runs from its beginning with the new settings."""
    for task in range(start + 1 if restart else start):
        folder = training_dir(output_dir, task)
        if folder.exists():
            if task == start:
                logger.warning(
                    "Task %d restarts from its beginning with the changed settings; removing `%s`.", task, folder
                )
            shutil.rmtree(folder)


def _lock_run(output_dir: Path, state: PartialState) -> FileLock | None:
    """Hold ``output_dir/.run.lock`` for the run (an OS file lock: a crashed run never leaves it stuck)."""
    lock, failure = None, None
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(output_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            lock, failure = (
                None,
                (
                    f"Another run is using `{output_dir}` (it holds `{LOCK_FILE}`). Wait for it to finish or stop it (a "
                    "killed `accelerate launch` can leave its worker processes running: check with `ps`), or use another "
                    "`output_dir`."
                ),
            )
    failure = broadcast_object_list([failure])[0]
    if failure is not None:
        raise RuntimeError(failure)
    return lock


def _load_source(base_model: PreTrainedModel, source: str | os.PathLike) -> tuple[PeftModel, RunRecord]:
    """The adapter to continue and its run record (a stage folder, or ``repo@revision`` on the Hub)."""
    path, revision = str(source), None
    if not os.path.isdir(path) and "@" in path:
        path, revision = path.rsplit("@", 1)
    if os.path.isdir(path):
        record = read_record(path)
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            record = read_record(hf_hub_download(path, "sequence.json", revision=revision))
        except LocalEntryNotFoundError as error:  # offline, or no answer and nothing cached
            raise hub_unreachable_error(path, revision, error) from error
    model = load_stage(base_model, path, revision)
    tuner = model.base_model
    record = dataclasses.replace(record, tasks=record.tasks[: record.finished_tasks])
    if record.class_names != tuner.class_names():
        raise ValueError(
            f"`{source}`: its run record ({record.finished_tasks} tasks, classes {record.class_names[:6]}…) does not "
            f"describe its adapter ({tuner.num_tasks} tasks, {tuner.class_names()[:6]}…); continue a complete stage "
            "folder or Hub revision."
        )
    return model, record
