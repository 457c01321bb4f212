# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""[`NSPTrainer`]: trains one task of a VPT-NSP² sequence with `transformers.Trainer`, start to finish.

One class of about 500 lines, like TRL's trainers: the `Trainer` hooks it overrides (optimizer, loss, data loaders,
evaluation, saving) share the task's state.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModel, EvalPrediction, PreTrainedModel, Trainer, TrainingArguments, set_seed

from .._io import write_atomically
from ..continual.card import write_model_card
from ..continual.data import (
    ClassIdLabels,
    ImageCollator,
    ImageTransform,
    find_columns,
    present_class_names,
    processor_transform,
    with_class_ids,
)
from ..continual.metrics import count_correct
from ..continual.stages import SEQUENCE_FILE, RunRecord, method_name
from ..tuner.classifier_alignment import align_classifier
from ..tuner.config import VPTNSPConfig
from ..tuner.model import VPTNSPModel
from ..tuner.null_space_update import NonFiniteError
from .config import NSPConfig


#: Output fields of a backbone that are not predictions (only ``logits`` reaches `compute_metrics`).
_NOT_PREDICTIONS = ["last_hidden_state", "pooler_output", "hidden_states", "attentions"]


class NSPTrainer(Trainer):
    """A `Trainer` that owns one task of a VPT-NSP² sequence, as TRL's trainers own their method.

    Given a base model and a [`VPTNSPConfig`] (first task), or a `PeftModel` with a `vpt_nsp` adapter (any later
    task, e.g. loaded with `PeftModel.from_pretrained(..., is_trainable=True)`), and a `datasets.Dataset` with an
    image column and a `ClassLabel` column, the trainer

    1. adds a head for the classes present in ``train_dataset`` (named by the `ClassLabel`; a class name identifies a
       class across datasets, so tasks arriving months apart with their own `ClassLabel`s share one model),
    2. trains it: ``CE(logits[:, task] / T, labels) + λ · LN-loss``, every prompt update projected into the null
       space of the earlier tasks (torch optimizer step hooks from `create_optimizer`, so once per real optimizer
       step whatever the gradient accumulation, never on a step the fp16 scaler skips, with any optimizer),
    3. at the end of `train()` folds the task into the null space (statistics over ``train_dataset`` with the
       evaluation transform, summed over processes) and refits the analytic head (`VPTNSPConfig`'s default) in the
       same pass; with linear heads (`classifier="linear"`) and `classifier_alignment`, it aligns the heads.

    After `train()` and `save_model()` the adapter is ready for the next task; `save_model` also writes the image
    processor. Labels everywhere (collator, loss, `evaluate`, `predict`, `compute_metrics`) are the model's class
    ids: logit column ``i`` is class id ``i``, named ``model.config.id2label[i]``. `evaluate()` on data of any seen
    classes reports class-incremental accuracy (`accuracy`, `accuracy_task_<t>`) and the cross-entropy over all seen
    classes (`eval_loss`).

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            A supported base model (or its Hub id/folder) with ``peft_config``, or a `PeftModel` to continue.
        args ([`NSPConfig`], *optional*):
            Training arguments (a plain `TrainingArguments` is converted).
        data_collator (*optional*):
            Replaces the default collator (``ImageCollator``: images → ``pixel_values`` with ``train_transform``
            for training, ``eval_transform`` otherwise).
        train_dataset / eval_dataset (`datasets.Dataset`):
            Datasets with a `datasets.Image` and a `ClassLabel` column. ``eval_dataset`` may be a dict of them.
        processing_class (*optional*):
            The image processor: the default evaluation transform, saved beside the adapter by `save_model`.
        compute_metrics (*optional*):
            Defaults to class-incremental accuracy.
        peft_config ([`VPTNSPConfig`], *optional*):
            The adapter to create on a base model.
        train_transform / eval_transform (*optional*):
            Images → pixel values; ``eval_transform`` defaults to ``processing_class`` (else ``train_transform``),
            ``train_transform`` to ``eval_transform`` (put augmentation in ``train_transform``).
        task_classes (*optional*):
            The order of the new head's columns, by class name (default: the classes present in ``train_dataset``, in
            `ClassLabel` order).
        tokenizer / text_names (*optional*):
            `classifier="text"`: the text tower's tokenizer, and the names it encodes for each class name (default:
            the class names).
        **kwargs: passed to `transformers.Trainer`.
    """

    _tag_names = ["peft-nsp", "vpt-nsp", "continual-learning"]
    _name = "VPT-NSP²"
    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        args: NSPConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | Mapping[str, Dataset] | None = None,
        processing_class: Any = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: Sequence[Any] | None = None,
        optimizers: tuple = (None, None),
        *,
        peft_config: VPTNSPConfig | None = None,
        train_transform: ImageTransform | None = None,
        eval_transform: ImageTransform | None = None,
        task_classes: Sequence[str] | None = None,
        tokenizer: Any = None,
        text_names: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        args = _nsp_config(args)
        if isinstance(model, PeftModel):
            _check_vpt_nsp(model)  # before anything reads the adapter (a LoRA PeftModel gets this error, not another)
        # New prompts and heads are drawn from `seed + <tasks already learned>`: the same task gets the same start.
        set_seed(args.seed + (model.base_model.num_tasks if isinstance(model, PeftModel) else 0))
        model = _peft_model(model, peft_config, args)
        self.eval_transform = eval_transform or _processor_transform(processing_class) or train_transform
        self.train_transform = train_transform or self.eval_transform
        self.task_dataset = None
        image_column = args.image_column
        if train_dataset is not None:
            image_column, label_column = find_columns(
                train_dataset, args.image_column, args.label_column, "train_dataset"
            )
            present = present_class_names(train_dataset, label_column)
            if task_classes is not None and sorted(task_classes) != sorted(present):
                raise ValueError(
                    f"`task_classes` {list(task_classes)} must be the classes present in `train_dataset` ({present})."
                )
            _add_task_head(model, list(task_classes or present), tokenizer, text_names)
            class_ids = _class_ids(model)
            self.task_dataset = with_class_ids(train_dataset, class_ids, image_column, label_column, "train_dataset")
            if args.dataset_repeats > 1:
                repeated = np.tile(np.arange(len(train_dataset)), args.dataset_repeats)
                train_dataset = with_class_ids(train_dataset.select(repeated), class_ids, image_column, label_column)
            else:
                train_dataset = self.task_dataset
        if eval_dataset is not None:
            first = next(iter(eval_dataset.values())) if isinstance(eval_dataset, Mapping) else eval_dataset
            image_column = image_column or find_columns(first, args.image_column, args.label_column, "eval_dataset")[0]
            eval_dataset = _prepare_eval_datasets(eval_dataset, model, args, image_column)
        if image_column is not None and self.eval_transform is None and data_collator is None:
            raise ValueError(
                "NSPTrainer needs to turn images into pixel values: pass `processing_class="
                "AutoImageProcessor.from_pretrained(<model>)` or `eval_transform=`/`train_transform=`."
            )
        self.image_column = image_column or "image"
        self._train_collator = data_collator or ImageCollator(self.train_transform, self.image_column)
        self._eval_collator = data_collator or ImageCollator(self.eval_transform, self.image_column)
        super().__init__(
            model=model,
            args=args,
            data_collator=self._train_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics or self.class_incremental_accuracy,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        self.projection = None
        self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ accessors
    @property
    def nsp_model(self) -> VPTNSPModel:
        """The tuner (unwrapped from DDP and the `PeftModel`)."""
        return self.accelerator.unwrap_model(self.model).base_model

    # ------------------------------------------------------------------ hooks of the Trainer
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self.args.weight_decay_mode == "l2":
            # The authors' Adam: L2 decay added to the gradient before the moments, on every trained tensor.
            self.optimizer = torch.optim.Adam(
                [p for p in (model or self.model).parameters() if p.requires_grad],
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                weight_decay=self.args.weight_decay,
            )
        optimizer = super().create_optimizer(model)
        _check_optimizer_holds_every_trainable_tensor(optimizer, model or self.model)
        if self.args.projection and self.projection is None:
            _warn_if_prompts_are_not_fp32(self.nsp_model)
            self.projection = self.nsp_model.attach_null_space_projection(optimizer, mode=self.args.projection_mode)
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The step schedule when `lr_decay_epochs` is set, else the `Trainer`'s."""
        if self.lr_scheduler is None and self.args.lr_decay_epochs:
            steps_per_epoch = num_training_steps / self.args.num_train_epochs
            milestones = sorted({round(epoch * steps_per_epoch) for epoch in self.args.lr_decay_epochs})
            self.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer or self.optimizer, milestones=milestones, gamma=self.args.lr_decay_factor
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        """Training: ``CE(logits[:, newest task] / T, labels) + λ · LN-loss``; evaluation: the cross-entropy of
        ``logits / T`` over all seen classes. ``labels`` are class ids."""
        tuner = self.nsp_model
        labels = inputs["labels"]
        logits = model(pixel_values=inputs["pixel_values"]).logits
        columns = tuner.class_ids_to_columns(labels)
        if model.training:
            task = tuner.task_columns()
            # The heads divide by the temperature (the adapter's, equal to `args.temperature`): logits are CE-ready.
            loss = F.cross_entropy(logits[:, task], columns - task.start)
            weight = self.args.ln_loss_weight
            if weight > 0:
                loss = loss + weight * tuner.layernorm_consistency_loss()
            if not bool(torch.isfinite(loss)):
                raise NonFiniteError(
                    f"The training loss of task {tuner.num_tasks - 1} became {loss.item()} at step "
                    f"{self.state.global_step + 1} (NaN/Inf images, labels or settings such as the temperature or "
                    "learning rate). Training stopped before the update; saved stages and checkpoints are unchanged."
                )
        else:
            loss = F.cross_entropy(logits, columns)
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The `Trainer`'s, returning logits only (over all seen classes), never a backbone's hidden states."""
        return super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys or _NOT_PREDICTIONS
        )

    def get_train_dataloader(self) -> DataLoader:
        with self._collating(self._train_collator):
            return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        if isinstance(eval_dataset, Dataset):
            eval_dataset = _prepare_eval_datasets(eval_dataset, self.model, self.args, self.image_column)
        with self._collating(self._eval_collator):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        with self._collating(self._eval_collator):
            return super().get_test_dataloader(
                _prepare_eval_datasets(test_dataset, self.model, self.args, self.image_column)
            )

    @contextmanager
    def _collating(self, collator: Callable | None) -> Iterator[None]:
        previous = self.data_collator
        self.data_collator = collator or previous
        try:
            yield
        finally:
            self.data_collator = previous

    def train(self, *args: Any, **kwargs: Any):
        """`Trainer.train`, then the task is folded into the null space (and the heads aligned, if asked)."""
        output = super().train(*args, **kwargs)
        self.finish_task()
        return output

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model` (adapter, class names, image processor), then, outside checkpoints, the record of the
        adapter's tasks (``sequence.json``) and its model card (``README.md``), as the continual loop writes them."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            self.create_model_card(output_dir=output_dir)

    def create_model_card(self, output_dir: str | None = None, **kwargs: Any) -> None:
        """Write peft-nsp's model card (classes of every task, how to load, classify and continue; `library_name:
        peft`, the base model, our tags) for the adapter saved in ``output_dir`` (default: `args.output_dir`),
        replacing PEFT's and transformers' generic cards. ``kwargs`` (transformers' card fields) are not used."""
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        if not (folder / "adapter_config.json").is_file():
            raise ValueError(
                f"No adapter in `{folder}` to describe: call `trainer.save_model({str(folder)!r})` first."
            )
        tuner = self.nsp_model
        config = tuner.peft_config[tuner.active_adapters[0]]
        record = RunRecord(
            tasks=tuner.class_names_by_task(),
            seed=self.args.seed,
            method=method_name(self.args.projection, False, config.classifier, self.args.classifier_alignment),
            finished_tasks=tuner.tasks_seen(),
            settings=self.args.recorded_settings(),
            run_info={"base_model": config.base_model_name_or_path},
        )
        write_atomically(folder / SEQUENCE_FILE, record.to_json().encode())
        write_model_card(folder)

    # ------------------------------------------------------------------ the end of a task
    def finish_task(self) -> None:
        """Fold the trained task into the null space (statistics over its training data, evaluation transform,
        summed over processes) and, with `classifier_alignment`, store its class statistics and align the heads.
        Does nothing when the task is already folded."""
        tuner = self.nsp_model
        if self.task_dataset is None or tuner.tasks_seen() >= tuner.num_tasks:
            return
        task = tuner.num_tasks - 1
        accelerator = self.accelerator
        shard = self.task_dataset.select(
            range(accelerator.process_index, len(self.task_dataset), accelerator.num_processes)
        )
        loader = DataLoader(
            shard,
            batch_size=self.args.statistics_batch_size,
            collate_fn=ImageCollator(self.eval_transform, self.image_column),
            num_workers=self.args.dataloader_num_workers,
        )
        reduce_fn = functools.partial(accelerator.reduce, reduction="sum")
        show = accelerator.is_main_process and not self.args.disable_tqdm
        # The pass also fits an analytic head, on the samples of every process placed by their index in the task.
        indices = range(accelerator.process_index, len(self.task_dataset), accelerator.num_processes)
        tuner.update_null_space(
            tqdm(loader, desc=f"Null-space statistics of task {task}", disable=not show),
            reduce_fn=reduce_fn,
            sample_indices=indices,
        )
        if self.args.classifier_alignment:
            tuner.update_class_statistics(
                tqdm(loader, desc=f"Class statistics of task {task}", disable=not show), reduce_fn=reduce_fn
            )
            align_classifier(tuner, self.args.alignment_arguments(), seed=self.args.seed + task)
        tuner.check_finite()
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ metrics
    def class_incremental_accuracy(self, prediction: EvalPrediction) -> dict[str, float]:
        """Accuracy of the argmax over all seen classes, overall and per task (for tasks with samples)."""
        tuner = self.nsp_model
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        order = np.asarray(tuner.class_order())
        predicted = order[np.asarray(logits).argmax(-1)]
        labels = np.asarray(prediction.label_ids).astype(np.int64)
        config = tuner.peft_config[tuner.active_adapters[0]]
        task_of_class = {c: t for t, classes in enumerate(config.task_classes) for c in classes}
        correct, total = count_correct(predicted, labels, task_of_class, len(config.task_classes))
        metrics = {"accuracy": float(np.mean(predicted == labels)) if labels.size else float("nan")}
        metrics.update({f"accuracy_task_{t}": c / n for t, (c, n) in enumerate(zip(correct, total)) if n})
        return metrics


def _nsp_config(args: NSPConfig | TrainingArguments | None) -> NSPConfig:
    if args is None:
        return NSPConfig(output_dir="nsp-trainer-output")
    if isinstance(args, NSPConfig):
        return args
    if isinstance(args, TrainingArguments):  # as TRL does: keep every setting, add ours with their defaults
        values = args.to_dict()
        values["hub_token"] = args.hub_token
        values.pop("label_names", None)
        return NSPConfig(**{key: value for key, value in values.items() if not key.startswith("_")})
    raise ValueError(f"`args` must be `NSPConfig` (or `TrainingArguments`), got `{type(args).__name__}`.")


def _check_vpt_nsp(model: Any) -> None:
    if not isinstance(model, PeftModel) or not isinstance(model.base_model, VPTNSPModel):
        raise ValueError(
            "`model` must be a PeftModel with a `vpt_nsp` adapter, or a base model with `peft_config="
            "peft_nsp.VPTNSPConfig(...)`."
        )


def _peft_model(
    model: str | PreTrainedModel | PeftModel, peft_config: VPTNSPConfig | None, args: NSPConfig
) -> PeftModel:
    """The `PeftModel` to train: a new adapter on a base model, or the given one (TRL's rules)."""
    if isinstance(model, str):
        model = AutoModel.from_pretrained(model)
    if isinstance(model, PeftModel):
        if peft_config is not None:
            raise ValueError(
                "`model` is already a PeftModel: pass `peft_config` only with a base model (to continue an adapter, "
                "pass the PeftModel alone)."
            )
    elif peft_config is None:
        raise ValueError(
            "Pass `peft_config=peft_nsp.VPTNSPConfig(...)` to start an adapter on this base model, or a PeftModel "
            "loaded with `PeftModel.from_pretrained(base, adapter, is_trainable=True)` to continue one."
        )
    else:
        # The adapter records the training temperature: its heads divide by it, so its logits are what was trained.
        changes = {"temperature": args.temperature}
        if args.classifier_alignment and not peft_config.class_statistics:
            changes["class_statistics"] = True
        peft_config = VPTNSPConfig(**{**peft_config.to_dict(), **changes})
        model = get_peft_model(model, peft_config)
    _check_vpt_nsp(model)
    trained_at = model.peft_config[model.active_adapter].temperature
    if trained_at != args.temperature:
        raise ValueError(
            f"This adapter's heads were trained at temperature {trained_at:g} (its logits are their outputs divided by "
            f"it), but `NSPConfig.temperature` is {args.temperature:g}: continue with `temperature={trained_at:g}`."
        )
    if args.classifier_alignment and model.peft_config[model.active_adapter].classifier == "analytic":
        raise ValueError(
            "`classifier_alignment=True` retrains linear heads on sampled features, but this adapter's classifier is "
            "`'analytic'` (`VPTNSPConfig`'s default): the closed-form solution over every seen class, refit after each "
            "task. Turn one off (`VPTNSPConfig(classifier='linear')` for linear heads)."
        )
    if args.classifier_alignment and not model.peft_config[model.active_adapter].class_statistics:
        raise ValueError(
            "`classifier_alignment=True` needs class statistics in the adapter, and this one was created without: "
            "create the adapter with `VPTNSPConfig(class_statistics=True)` (earlier tasks have no statistics to "
            "align from)."
        )
    return model


def _check_optimizer_holds_every_trainable_tensor(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Refuse an optimizer (e.g. passed in `optimizers=`) that would leave a trained tensor of the task frozen."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        shown = ", ".join(f"`{name}`" for name in missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ValueError(
            f"The optimizer does not hold {len(missing)} tensor(s) this task trains ({shown}): NSPTrainer adds the new "
            "task's head from `train_dataset`'s classes, after an optimizer built beforehand. Pass "
            "`optimizer_cls_and_kwargs=(torch.optim.SGD, {'lr': ...})` so the Trainer builds it over every trainable "
            "tensor, or build it after `NSPTrainer(...)` from `[p for p in trainer.model.parameters() if "
            "p.requires_grad]` and set `trainer.optimizer`."
        )


def _processor_transform(processing_class: Any) -> ImageTransform | None:
    if processing_class is None or not callable(processing_class):
        return None
    return processor_transform(processing_class)


def _add_task_head(model: PeftModel, names: list[str], tokenizer: Any, text_names: Mapping[str, str] | None) -> None:
    """Add the head of the task made of ``names`` (or find it, when a run resumes before the task was folded)."""
    tuner = model.base_model
    if len(names) < 2:
        raise ValueError(
            f"`train_dataset` holds one class ({names}): a one-class task trains nothing (its cross-entropy over one "
            "logit is 0). Train each task on at least two new classes, e.g. add this class to the next task."
        )
    known = tuner.class_names()
    old = [name for name in names if name in known]
    if old:
        newest = known[tuner.task_columns()] if tuner.num_tasks else []
        if sorted(newest) == sorted(names) and tuner.tasks_seen() < tuner.num_tasks:
            return  # this task's head, added by an earlier (interrupted) trainer
        raise ValueError(
            f"`train_dataset` holds classes the model already learned: {old[:10]}. A task brings new classes only; "
            "evaluate old classes through `eval_dataset`."
        )
    if tuner.peft_config[tuner.active_adapters[0]].classifier == "text":
        texts = None if text_names is None else [text_names.get(name, name) for name in names]
        tuner.add_task(names, text_names=texts, tokenizer=tokenizer)
    else:
        tuner.add_task(names)


def _class_ids(model: PeftModel) -> dict[str, int]:
    tuner = model.base_model
    return dict(zip(tuner.class_names(), tuner.class_order()))


def _prepare_eval_datasets(dataset: Any, model: PeftModel, args: NSPConfig, image_column: str) -> Any:
    """Evaluation data with class-id labels and its images under ``image_column`` (the collator's: the training
    data's), so train and eval sets may name their columns differently (a dict of datasets stays a dict)."""
    if isinstance(dataset, Mapping):
        return {name: _prepare_eval_datasets(part, model, args, image_column) for name, part in dataset.items()}
    if isinstance(dataset.format.get("format_kwargs", {}).get("transform"), ClassIdLabels):
        return dataset  # already prepared
    own_image_column, label_column = find_columns(dataset, args.image_column, args.label_column, "eval_dataset")
    if own_image_column != image_column:
        if image_column in dataset.column_names:
            raise ValueError(
                f"The evaluation data's images are in `{own_image_column}`, the training data's in `{image_column}`, "
                f"and the evaluation data has another `{image_column}` column: rename one of them (or set "
                "`NSPConfig(image_column=...)`)."
            )
        dataset = dataset.rename_column(own_image_column, image_column)
    return with_class_ids(dataset, _class_ids(model), image_column, label_column, "eval_dataset")


def _warn_if_prompts_are_not_fp32(tuner: VPTNSPModel) -> None:
    dtypes = {layer.vpt_nsp_prompt[tuner.active_adapters[0]].dtype for layer in tuner.prompted_layers()}
    if dtypes != {torch.float32}:
        warnings.warn(
            f"The prompts are {sorted(map(str, dtypes))}, not float32: every projected update is rounded to that "
            "precision, which breaks the null-space property (old tasks drift). Keep the model in float32 and train "
            "with mixed precision (`bf16=True` / `fp16=True`) instead of casting it.",
            stacklevel=3,
        )
