# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The class-incremental loop: one [`NSPTrainer`] per task, evaluation with the `evaluate` metric, resumable stages.

Its steps: the task plan (`plan.py`), the run's start or resume (`resume.py`), then per task a trainer, an evaluation
of every seen task and a stage on disk (`peft_nsp.continual.stages`; only the main process writes), published to a
[`StageStore`] when one is given.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import gc
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel, TrainerCallback

from ..continual.card import TEMPLATE_PATH, write_model_card
from ..continual.class_names import readable_class_names
from ..continual.continual_learning_metric import load_continual_metric
from ..continual.data import ImageTransform, find_columns, select_classes
from ..continual.metrics import ContinualMetrics
from ..continual.plots import plot_accuracy_curve, plot_accuracy_matrix
from ..continual.stages import (
    CURVE_PLOT,
    MATRIX_PLOT,
    METRICS_FILE,
    RunRecord,
    StageStore,
    last_complete_checkpoint,
    read_progress,
    stage_dir,
    task_class_ids,
    training_dir,
    write_stage,
)
from ..trainer import NSPConfig, NSPTrainer
from ..tuner.config import VPTNSPConfig
from .config import ClassIncrementalConfig
from .plan import check_plan, plan_tasks
from .resume import (
    apply_adapter_changes,
    check_settings,
    current_settings,
    load_source,
    load_stage,
    lock_run,
    method_of,
    recorded_settings,
    remove_stale_checkpoints,
)


logger = logging.getLogger(__name__)


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
    config: ClassIncrementalConfig,
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    train_transform: ImageTransform,
    eval_transform: ImageTransform | None = None,
    processing_class: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[TrainerCallback] = (),
    on_stage_saved: Callable[[Path, int], None] | None = None,
    stage_store: StageStore | None = None,
) -> ContinualResult:
    """Train a class-incremental task sequence with VPT-NSP² (or a baseline) and measure forgetting.

    The task plan comes first (`plan_tasks`: ``config.class_order`` or the classes shuffled with ``args.seed``, cut
    into ``config.num_tasks`` equal tasks). Each task is one [`NSPTrainer`] (head, training with the projection,
    null-space statistics, classifier alignment when ``args.classifier_alignment``), then an evaluation on the test
    data of every task seen (the `evaluate` metric of `load_continual_metric`) and a stage on disk. Re-running the
    same call resumes after the last finished stage, or from the last complete Trainer checkpoint inside a task, and
    ends as an uninterrupted run would; a resume with other settings is refused unless
    ``args.resume_with_changed_settings``. Then the new settings apply to the whole of the first unfinished task and
    on (its training and its null-space fold: a task interrupted inside restarts from its beginning), and the record
    lists them from that task; settings that shaped the stage's prompts, statistics or heads (e.g. ``prompt_length``)
    are refused.

    Args:
        base_model: a fresh supported model (prompts and heads are added here, or restored when resuming).
        peft_config: the adapter configuration (ignored when resuming or continuing).
        args: training arguments; ``output_dir`` holds the whole run, ``image_column``/``label_column`` name the
            datasets' columns (default: found by their features). ``projection=False`` is VPT-Seq.
        config: the run's settings: tasks, class order, joint, the adapter to continue, run facts.
        train_dataset / test_dataset: datasets with an `Image` column and a `ClassLabel` column (same names).
        train_transform: images → pixel values for training (augmentation goes here).
        eval_transform: images → pixel values for statistics and evaluation (default: ``train_transform``).
        processing_class: the image processor, saved in every stage (so `pipeline` finds it). Default: the one in
            the base model's folder.
        tokenizer: ``classifier="text"`` on `CLIPModel`/`SiglipModel`: the text tower's tokenizer.
        callbacks: extra Trainer callbacks for every task.
        on_stage_saved: called on the main process with ``(stage_dir, task)`` once a stage is on disk and the
            progress pointer names it.
        stage_store: where stages are published after each task (`StageStore.publish`, e.g.
            `peft_nsp.hub.HubStageStore(repo_id)`) and a ``config.continue_from`` that is not a local folder is
            fetched from (default: the Hub).
    """
    eval_transform = eval_transform or train_transform
    processing_class = processing_class or _base_model_processor(base_model)
    image_column, label_column = find_columns(train_dataset, args.image_column, args.label_column, "train_dataset")
    find_columns(test_dataset, image_column, label_column, "test_dataset")
    names = list(train_dataset.features[label_column].names)
    test_names = list(test_dataset.features[label_column].names)
    if test_names != names:
        raise ValueError(
            f"`train_dataset` and `test_dataset` must share their `ClassLabel` ({len(names)} vs {len(test_names)} "
            "names, or another order)."
        )
    class_names = config.class_names
    text_names = dict(zip(names, class_names if class_names is not None else readable_class_names(names)))
    if len(text_names) != len(names):
        raise ValueError(f"Got {len(class_names)} `class_names` for {len(names)} classes.")

    source_record, source_model = None, None
    if config.continue_from is not None:
        source_model, source_record = load_source(base_model, config.continue_from, stage_store)
    inherited = source_record.tasks if source_record else []
    planned = plan_tasks(config, names, args.seed, inherited)
    check_plan(planned, len(inherited), train_dataset, test_dataset, label_column)
    ids_of = {name: i for i, name in enumerate(names)}

    state = PartialState()
    output_dir = Path(args.output_dir)
    lock = lock_run(output_dir, state)
    try:
        record = read_progress(output_dir) if state.is_main_process else None
        record = broadcast_object_list([record])[0]
        settings = recorded_settings(args, source_model.peft_config["default"] if source_model else peft_config)
        method = method_of(settings, config.joint)
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
                joint=config.joint,
                finished_tasks=start,
                settings=settings,
                run_info=dict(config.run_info),
                metrics=metrics.to_dict(),
                continued_from=config.continue_from,
            )
        else:
            if record.tasks != planned:
                raise ValueError(
                    f"`{output_dir}` holds a run with another task split ({record.tasks[:3]}…); use a new `output_dir` "
                    "or the same seed/class order/num_tasks (and `continue_from`) to resume it."
                )
            previous_method = method_of(current_settings(record), config.joint)
            record, changed = check_settings(record, settings, args, output_dir)
            start = record.finished_tasks
            if method != previous_method:
                record = dataclasses.replace(record, method=f"{record.method}, then {method} from task {start}")
            if state.is_main_process:
                remove_stale_checkpoints(output_dir, start, restart=bool(changed))
            model = load_stage(base_model, stage_dir(output_dir, start - 1))
            apply_adapter_changes(model.peft_config["default"], changed)
            metrics = ContinualMetrics.from_dict(record.metrics)
            logger.info("Resuming after task %d of %d from %s", start, len(planned), output_dir)
        hooks = [hook for hook in (on_stage_saved, stage_store and stage_store.publish) if hook]
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
            _save_stage_everywhere(model, record, task, output_dir, processing_class, hooks, state)
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
    hooks: Sequence[Callable[[Path, int], None]],
    state: PartialState,
) -> None:
    """The main process writes the stage; every process learns whether it failed (none waits forever)."""
    failure = None
    if state.is_main_process:
        try:
            try:
                stage = write_stage(
                    output_dir, task, record, lambda folder: write_stage_files(folder, model, record, processing_class)
                )
            except Exception as error:
                _raise_if_disk_full(
                    error, f"the stage of task {task} into `{output_dir}`", "the half-written stage folder was removed"
                )
                raise
            shutil.rmtree(training_dir(output_dir, task), ignore_errors=True)  # the stage supersedes them
            metrics = ContinualMetrics.from_dict(record.metrics)
            print(f"\nAfter task {task} (tasks 0–{len(record.tasks) - 1}):\n{metrics.format_table()}", flush=True)
            for hook in hooks:  # observers, then the store's publish
                hook(stage, task)
        except Exception as error:  # re-raised below, after every process has heard of it
            failure = error
    if broadcast_object_list([failure is not None])[0]:
        if failure is not None:
            raise failure
        raise RuntimeError(f"The main process failed while saving task {task}; see its error.")
    state.wait_for_everyone()


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


def write_stage_files(folder: Path, model: PeftModel, record: RunRecord, processing_class: Any) -> None:
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
