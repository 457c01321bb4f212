# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The class-incremental loop: one `NullSpaceTrainer` per task, statistics, evaluation, resumable stages.

Output layout (only the main process writes):

    output_dir/
      progress.json              # pointer to the last finished task, replaced atomically
      tasks/task-<t>/            # the model after task t: adapter (+ projector state), metrics, plots
      training/task-<t>/         # Trainer checkpoints while task t trains (resume_from_checkpoint)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from peft import PeftModel, get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .._io import fsync_tree, write_atomically
from ..trainer import NSPTrainingArguments, NullSpaceTrainer
from ..tuner.config import VPTNSPConfig
from .class_names import readable_class_names
from .data import ImageTransform, TaskCollator, check_image_dataset, select_classes, split_classes
from .metrics import ContinualMetrics, count_correct
from .plots import plot_accuracy_curve, plot_accuracy_matrix
from .refinement import HeadRefinementArguments, refine_head

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"


@dataclass
class ContinualResult:
    """What [`run_class_incremental`] returns."""

    model: PeftModel
    metrics: ContinualMetrics
    tasks: list[list[int]]
    """Global class ids of every task, in training order (the class order cut into tasks)."""
    output_dir: Path


def run_class_incremental(
    base_model: PreTrainedModel,
    peft_config: VPTNSPConfig,
    args: NSPTrainingArguments,
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_tasks: int,
    train_transform: ImageTransform,
    eval_transform: ImageTransform | None = None,
    image_column: str = "image",
    label_column: str = "label",
    class_order: Sequence[int] | None = None,
    joint: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    run_info: Mapping[str, Any] | None = None,
    on_stage_saved: Callable[[Path, int], None] | None = None,
    tokenizer: Any = None,
    class_names: Sequence[str] | None = None,
    refinement: HeadRefinementArguments | None = None,
) -> ContinualResult:
    """Train a class-incremental task sequence with VPT-NSP² (or a baseline) and measure forgetting.

    Classes are shuffled with ``args.seed`` (or taken from ``class_order``) and cut into ``num_tasks`` equal
    tasks. Per task: add its head, train it with [`NullSpaceTrainer`], collect the null-space statistics on its
    training data (``eval_transform``), optionally refine the head ([`refine_head`]), evaluate on the test data of
    every task seen, save the stage. Re-running the same call resumes after the last finished task, or from the
    last Trainer checkpoint inside a task.

    Args:
        base_model: a fresh supported model (prompts and heads are added here, or restored when resuming).
        peft_config: the adapter configuration.
        args: training arguments; ``output_dir`` holds the whole run. ``projection=False`` with
            ``ln_loss_weight=0`` is VPT-Seq.
        train_dataset / test_dataset: datasets with an `Image` column and a `ClassLabel` column.
        num_tasks: T.
        train_transform: images → pixel values for training (augmentation goes here).
        eval_transform: images → pixel values for statistics and evaluation (default: ``train_transform``).
        image_column / label_column: column names.
        class_order: a permutation of the class ids to use instead of the seeded shuffle.
        joint: train one task on all classes (the upper bound); the same metrics, one row.
        callbacks: extra Trainer callbacks for every task.
        run_info: JSON-serialisable facts about the run stored in every stage's ``sequence.json`` (e.g.
            ``{"benchmark": "cifar100-10", "dataset": "uoft-cs/cifar100"}``; model cards read them).
        on_stage_saved: called on the main process with ``(stage_dir, task)`` once a stage is on disk and the
            progress pointer names it (e.g. to push it to the Hub).
        tokenizer: ``classifier="text"`` on `CLIPModel`/`SiglipModel`: the text tower's tokenizer, which encodes
            each task's class names when its head is added.
        class_names: ``classifier="text"``: the prompt name of every class id. Default: the dataset's
            `ClassLabel` names through [`readable_class_names`] (ImageNet-R WordNet ids → names, ``_`` → space).
        refinement: refine the image-side head after each task with these hyperparameters (CLIP-NSP²); turns on
            `class_statistics` in the adapter. ``None``: no refinement.
    """
    eval_transform = eval_transform or train_transform
    labels = check_image_dataset(train_dataset, image_column, label_column, "train_dataset")
    test_labels = check_image_dataset(test_dataset, image_column, label_column, "test_dataset")
    if labels.num_classes != test_labels.num_classes:
        raise ValueError(
            f"`train_dataset` has {labels.num_classes} classes but `test_dataset` {test_labels.num_classes}."
        )
    tasks = split_classes(labels.num_classes, num_tasks, args.seed, class_order)
    if joint:
        tasks = [[c for task in tasks for c in task]]
    for classes in tasks:
        select_classes(train_dataset, label_column, classes, "train_dataset")
        select_classes(test_dataset, label_column, classes, "test_dataset")
    names = list(class_names) if class_names is not None else readable_class_names(labels.names)
    if len(names) != labels.num_classes:
        raise ValueError(f"Got {len(names)} `class_names` for {labels.num_classes} classes.")
    if refinement is not None and not peft_config.class_statistics:
        peft_config = dataclasses.replace(peft_config, class_statistics=True)

    output_dir = Path(args.output_dir)
    progress = _read_progress(output_dir)
    if progress is None:
        set_seed(args.seed)
        model = get_peft_model(base_model, copy.deepcopy(peft_config))
        metrics, start = ContinualMetrics(), 0
    else:
        if progress["tasks"] != tasks:
            raise ValueError(
                f"`{output_dir}` holds a run with another task split ({progress['tasks']}); use a new `output_dir` "
                "or the same seed/class order/num_tasks to resume it."
            )
        start = progress["finished_tasks"]
        model = PeftModel.from_pretrained(base_model, _stage_dir(output_dir, start - 1), is_trainable=True)
        metrics = ContinualMetrics.from_dict(progress["metrics"])
        logger.info("Resuming after task %d of %d from %s", start, len(tasks), output_dir)

    for task in range(start, len(tasks)):
        set_seed(args.seed + task)
        if model.peft_config[model.active_adapter].classifier == "text":
            model.add_task(tasks[task], class_names=[names[c] for c in tasks[task]], tokenizer=tokenizer)
        else:
            model.add_task(tasks[task])
        task_args = dataclasses.replace(
            args,
            output_dir=str(output_dir / "training" / f"task-{task}"),
            remove_unused_columns=False,
            push_to_hub=False,  # stages, not Trainer checkpoints, are what gets published (peft_nsp.hub)
        )
        trainer = NullSpaceTrainer(
            model,
            task_args,
            train_dataset=select_classes(train_dataset, label_column, tasks[task]),
            data_collator=TaskCollator(train_transform, image_column, label_column, task_classes=tasks[task]),
            callbacks=list(callbacks),
        )
        checkpoint = get_last_checkpoint(task_args.output_dir) if os.path.isdir(task_args.output_dir) else None
        trainer.train(resume_from_checkpoint=checkpoint)
        accelerator = trainer.accelerator
        show = accelerator.is_main_process and not args.disable_tqdm
        task_data = select_classes(train_dataset, label_column, tasks[task])
        shard = task_data.select(range(accelerator.process_index, len(task_data), accelerator.num_processes))
        loader = DataLoader(
            shard,
            batch_size=args.statistics_batch_size,
            collate_fn=TaskCollator(eval_transform, image_column, label_column),
            num_workers=args.dataloader_num_workers,
        )
        reduce_fn = functools.partial(accelerator.reduce, reduction="sum")
        if args.projection or trainer.ln_loss_weight() > 0:
            model.update_null_space(
                tqdm(loader, desc=f"Statistics of task {task + 1}", disable=not show), reduce_fn=reduce_fn
            )
        if refinement is not None:
            model.update_class_statistics(
                tqdm(loader, desc=f"Class statistics of task {task + 1}", disable=not show), reduce_fn=reduce_fn
            )
            refine_head(model, refinement, seed=args.seed + task)
        correct, total = evaluate_seen_tasks(
            model, test_dataset, tasks[: task + 1], eval_transform, args, accelerator, image_column, label_column
        )
        metrics.record_task(task, correct, total)
        failure = None
        if accelerator.is_main_process:
            try:
                stage = _save_stage(
                    model, metrics, tasks, task, output_dir, args, joint, labels.names, run_info, refinement
                )
                print(f"\nAfter task {task + 1}/{len(tasks)}:\n{metrics.format_table()}", flush=True)
                if on_stage_saved is not None:
                    on_stage_saved(stage, task)
            except Exception as error:  # re-raised below, after every process has heard of it
                failure = error
        # Every process learns whether the main one failed, so none waits forever in the next collective.
        if broadcast_object_list([failure is not None])[0]:
            if failure is not None:
                raise failure
            raise RuntimeError(f"The main process failed while saving task {task}; see its error.")
        accelerator.wait_for_everyone()
    return ContinualResult(model=model, metrics=metrics, tasks=tasks, output_dir=output_dir)


@torch.no_grad()
def evaluate_seen_tasks(
    model: PeftModel,
    test_dataset: Dataset,
    tasks: list[list[int]],
    transform: ImageTransform,
    args: NSPTrainingArguments,
    accelerator: Any,
    image_column: str = "image",
    label_column: str = "label",
) -> tuple[list[int], list[int]]:
    """Correct and total test counts per seen task; the prediction is the argmax over all seen classes.

    Data is sharded over processes and gathered with ``gather_for_metrics``, which drops the samples repeated to
    even out the last batch.
    """
    seen = [c for classes in tasks for c in classes]
    subset = select_classes(test_dataset, label_column, seen, "test_dataset")
    loader = accelerator.prepare(
        DataLoader(
            subset,
            batch_size=args.per_device_eval_batch_size,
            collate_fn=TaskCollator(transform, image_column, label_column),
            num_workers=args.dataloader_num_workers,
        )
    )
    column_class = torch.tensor(model.class_order(), device=accelerator.device)
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    show = accelerator.is_main_process and not args.disable_tqdm
    for batch in tqdm(loader, desc=f"Evaluating {len(tasks)} task(s)", disable=not show):
        logits = model(pixel_values=batch["pixel_values"]).logits
        predicted, target = accelerator.gather_for_metrics((column_class[logits.argmax(-1)], batch["labels"]))
        predictions.append(predicted.cpu())
        targets.append(target.cpu())
    model.train(was_training)
    task_of_class = {c: t for t, classes in enumerate(tasks) for c in classes}
    return count_correct(torch.cat(predictions).tolist(), torch.cat(targets).tolist(), task_of_class, len(tasks))


def _stage_dir(output_dir: Path, task: int) -> Path:
    return output_dir / "tasks" / f"task-{task}"


def _read_progress(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / PROGRESS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _save_stage(
    model: PeftModel,
    metrics: ContinualMetrics,
    tasks: list[list[int]],
    task: int,
    output_dir: Path,
    args: NSPTrainingArguments,
    joint: bool,
    class_names: list[str],
    run_info: Mapping[str, Any] | None,
    refinement: HeadRefinementArguments | None,
) -> Path:
    """Write the stage into a temporary folder, rename it into place, then move the progress pointer."""
    final = _stage_dir(output_dir, task)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    metrics.save_json(partial / "metrics.json")
    plot_accuracy_matrix(metrics, partial / "accuracy_matrix.png")
    plot_accuracy_curve(metrics, partial / "accuracy_curve.png", label="VPT-NSP²" if args.projection else "VPT-Seq")
    sequence = {
        "finished_tasks": task + 1,
        "tasks": tasks,
        "seed": args.seed,
        "joint": joint,
        "projection": args.projection,
        "class_names": class_names,
        "hyperparameters": _hyperparameters(args, refinement),
        "run_info": dict(run_info or {}),
        "metrics": metrics.to_dict(),
    }
    (partial / "sequence.json").write_text(json.dumps(sequence, indent=2))
    from ..hub.card import TEMPLATE_PATH, write_model_card  # the hub package imports this module

    if TEMPLATE_PATH.is_file():  # a source checkout: the stage carries our model card, pushed or not
        write_model_card(partial)
    fsync_tree(partial)  # the pointer below must never name a stage whose files are not on disk
    shutil.rmtree(final, ignore_errors=True)  # a stage renamed by a run killed before its pointer moved
    os.replace(partial, final)
    write_atomically(output_dir / PROGRESS_FILE, json.dumps(sequence, indent=2).encode())
    return final


def _hyperparameters(args: NSPTrainingArguments, refinement: HeadRefinementArguments | None) -> dict[str, Any]:
    """The training arguments a reader of the run needs (the adapter's own live in ``adapter_config.json``)."""
    names = (
        "learning_rate", "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "gradient_accumulation_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim",
        "lr_decay_epochs", "lr_decay_factor", "fp16", "bf16", "temperature", "ln_loss_weight", "projection",
        "projection_mode", "seed",
    )
    values = {name: getattr(args, name) for name in names}
    values["optim"] = str(values["optim"].value if hasattr(values["optim"], "value") else values["optim"])
    values["lr_scheduler_type"] = str(getattr(values["lr_scheduler_type"], "value", values["lr_scheduler_type"]))
    if args.lr_decay_epochs:  # NullSpaceTrainer's step schedule replaces the scheduler type and warm-up
        values["lr_scheduler_type"], values["warmup_steps"] = "multistep", 0
    values["world_size"] = args.world_size
    values["head_refinement"] = None if refinement is None else dataclasses.asdict(refinement)
    return json.loads(json.dumps(values, default=str))

