# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The recipes' shared command line: data, model and prompt arguments, plus `NSPConfig`, with the
paper's hyperparameters as per-benchmark defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import HfArgumentParser

from ..continual.class_names import benchmark_text_templates
from ..continual.refinement import HeadRefinementArguments
from ..trainer import NSPConfig
from ..tuner.config import VPTNSPConfig

DATA_LAYOUTS = ("auto", "hub", "imagefolder", "domainnet")
CLASSIFIERS = ("linear", "text")
PAPER_BATCH_SIZE = 256
CLIP_BATCH_SIZE = 220


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the paper: its data and the settings that differ between benchmarks."""

    name: str
    num_tasks: int
    temperature: float
    dataset: Optional[str] = None
    num_classes: Optional[int] = None
    """Keep only the most frequent classes (DomainNet: 200 of 345)."""

    @property
    def family(self) -> str:
        """The dataset family (``cifar100``, ``imagenet-r``, ``domainnet``)."""
        return self.name.rsplit("-", 1)[0]


BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark("cifar100-10", num_tasks=10, temperature=28.0, dataset="uoft-cs/cifar100"),
        Benchmark("cifar100-20", num_tasks=20, temperature=25.0, dataset="uoft-cs/cifar100"),
        Benchmark("imagenet-r-10", num_tasks=10, temperature=30.0),
        Benchmark("domainnet-10", num_tasks=10, temperature=30.0, num_classes=200),
    )
}

#: The paper's training recipe (ALGORITHM.md), shared by all benchmarks. Adam's L2 weight decay is approximated by
#: AdamW's decoupled decay of the same value (5e-5 · lr per step: negligible either way).
PAPER_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.01,
    "weight_decay": 5e-5,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "optim": "adamw_torch",
    "num_train_epochs": 100,
    "lr_decay_factor": 0.1,
    "per_device_eval_batch_size": PAPER_BATCH_SIZE,
    "statistics_batch_size": 64,
    "seed": 2024,
    "logging_steps": 10,
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "dataloader_num_workers": 4,
}

#: CLIP-NSP² (``--classifier text``): what differs from the ViT recipe (prompts in the first 3 image blocks, the
#: authors' temperature 1 for cosine logits; lr decay at 50 % / 80 % = epochs 10 and 16).
CLIP_DEFAULTS: dict[str, Any] = {
    "model_name_or_path": "openai/clip-vit-base-patch16",
    "learning_rate": 0.001,
    "num_train_epochs": 20,
    "temperature": 1.0,
    "eta": 0.98,
    "prompt_layers": [0, 1, 2],
}


@dataclass
class DataArguments:
    """Where the images come from."""

    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "A Hub dataset id, an `imagefolder` directory, or a DomainNet root with `*_train.txt` / "
            "`*_test.txt` split lists. Default: the benchmark's Hub dataset (CIFAR-100)."
        },
    )
    data_layout: str = field(
        default="auto",
        metadata={"help": "How to read `dataset`; `auto` picks from what is there.", "choices": list(DATA_LAYOUTS)},
    )
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (default: the Image feature)."})
    label_column: Optional[str] = field(
        default=None, metadata={"help": "Label column (default: the ClassLabel feature; CIFAR-100: `fine_label`)."}
    )
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    test_split: str = field(default="test", metadata={"help": "Test split name; made from `train` if missing."})
    test_fraction: float = field(
        default=0.2,
        metadata={"help": "Per-class fraction held out as test data when the dataset has no test split (ImageNet-R)."},
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seeds the held-out test split (fixed, so every training seed scores the same)."}
    )
    num_classes: Optional[int] = field(
        default=None, metadata={"help": "Keep the N most frequent training classes (DomainNet default: 200)."}
    )
    max_train_samples_per_class: Optional[int] = field(
        default=None, metadata={"help": "Subsample each class of the training data (quick runs)."}
    )
    max_test_samples_per_class: Optional[int] = field(default=None, metadata={"help": "Same for the test data."})
    image_size: Optional[int] = field(default=None, metadata={"help": "Input side (default: the model's)."})
    auto_augment: bool = field(default=True, metadata={"help": "AutoAugment after RandomResizedCrop (paper: on)."})

    def __post_init__(self) -> None:
        if self.data_layout not in DATA_LAYOUTS:
            raise ValueError(f"`--data_layout` must be one of {list(DATA_LAYOUTS)}, got {self.data_layout!r}.")
        if self.test_split == self.train_split:
            raise ValueError(f"`--test_split` and `--train_split` are both `{self.train_split}`: evaluate on other data.")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"`--test_fraction` must be in (0, 1), got {self.test_fraction}.")
        for name in ("num_classes", "max_train_samples_per_class", "max_test_samples_per_class", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`--{name}` must be ≥ 1, got {value}.")


@dataclass
class ModelArguments:
    """The pre-trained model and the prompts added to it."""

    model_name_or_path: str = field(
        default="google/vit-base-patch16-224-in21k",
        metadata={"help": "A ViT-family checkpoint (Hub id or local directory)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention backend: `sdpa` or `eager`."})
    num_tasks: Optional[int] = field(default=None, metadata={"help": "Number of tasks (default: the benchmark's)."})
    joint: bool = field(default=False, metadata={"help": "Train all classes as one task (the upper bound)."})
    prompt_length: int = field(default=4, metadata={"help": "Prompt tokens per layer (paper: 4)."})
    prompt_layers: Optional[list[int]] = field(default=None, metadata={"help": "Prompted blocks (default: all)."})
    threshold_mode: str = field(default="adaptive", metadata={"help": "`adaptive` or `times` null-space threshold."})
    eta: float = field(default=0.97, metadata={"help": "η of both projectors (paper: 0.94 … 0.98)."})
    classifier: str = field(
        default="linear",
        metadata={
            "help": "`linear` heads, or `text`: CLIP-NSP²'s cosine similarity to the class names' text embeddings "
            "(CLIP/SigLIP models; switches to the paper's CLIP hyperparameters).",
            "choices": list(CLASSIFIERS),
        },
    )
    head_refinement: Optional[bool] = field(
        default=None,
        metadata={"help": "Refine the head on class-Gaussian features after each task (default: on for `text`)."},
    )

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"`--classifier` must be one of {list(CLASSIFIERS)}, got {self.classifier!r}.")
        if self.head_refinement is None:
            self.head_refinement = self.classifier == "text"

    def peft_config(self, ln_loss_weight: float, benchmark: Benchmark) -> VPTNSPConfig:
        text = {"text_templates": benchmark_text_templates(benchmark.family.replace("-", "_"))}
        return VPTNSPConfig(
            prompt_length=self.prompt_length,
            prompt_layers=self.prompt_layers,
            threshold_mode=self.threshold_mode,
            eta1=self.eta,
            eta2=self.eta,
            ln_loss_weight=ln_loss_weight,
            classifier=self.classifier,
            class_statistics=bool(self.head_refinement),
            **(text if self.classifier == "text" else {}),
        )


@dataclass
class RecipeArguments:
    """Everything a recipe run needs, parsed."""

    benchmark: Benchmark
    data: DataArguments
    model: ModelArguments
    training: NSPConfig
    refinement: HeadRefinementArguments

    @property
    def num_tasks(self) -> int:
        return self.model.num_tasks or self.benchmark.num_tasks

    @property
    def method(self) -> str:
        if self.model.joint:
            return "Upper bound (joint)"
        if self.model.classifier == "text":
            return "CLIP-NSP²" if self.training.projection else "CLIP-Seq"
        return "VPT-NSP²" if self.training.projection else "VPT-Seq"


def resolve_benchmark(name: str, argv: Sequence[str]) -> Benchmark:
    """A benchmark by name (``cifar100-10``) or by family (``cifar100``: the split follows ``--num_tasks``).

    A family with a task count the paper did not run keeps the family's first settings under a new name (no
    published numbers to compare with).
    """
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    family = [spec for spec in BENCHMARKS.values() if spec.name.rsplit("-", 1)[0] == name]
    if not family:
        families = sorted({spec.name.rsplit("-", 1)[0] for spec in BENCHMARKS.values()})
        raise ValueError(f"Unknown benchmark {name!r}; known: {sorted(BENCHMARKS)} or the families {families}.")
    num_tasks = _pre_parse(argv, "--num_tasks", int)
    if num_tasks is None:
        return family[0]
    named = f"{name}-{num_tasks}"
    return BENCHMARKS.get(named) or dataclasses.replace(family[0], name=named, num_tasks=num_tasks)


def parse_recipe_arguments(benchmark: str, argv: Sequence[str] | None = None) -> RecipeArguments:
    """Parse a recipe's command line with the paper's defaults for ``benchmark`` (see [`resolve_benchmark`]).

    ``--projection off`` (or ``false``) gives VPT-Seq, which also turns the LayerNorm loss off unless
    ``--ln_loss_weight`` is given. Without ``--lr_decay_epochs`` the learning rate decays at 50 % and 80 % of the
    epochs (paper: 50 and 80 of 100). Without ``--per_device_train_batch_size`` the paper's batch of 256 is split over
    the launched processes (``WORLD_SIZE``). fp16 mixed precision (the paper's) is on by default on CUDA unless
    ``--bf16`` is given.
    """
    argv = _switches_as_booleans(list(sys.argv[1:] if argv is None else argv))
    spec = resolve_benchmark(benchmark, argv)
    parser = HfArgumentParser((DataArguments, ModelArguments, NSPConfig, HeadRefinementArguments))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    clip = _pre_parse(argv, "--classifier", str) == "text"
    defaults = {
        **PAPER_TRAINING_DEFAULTS,
        "temperature": spec.temperature,
        "per_device_train_batch_size": max(1, (CLIP_BATCH_SIZE if clip else PAPER_BATCH_SIZE) // world_size),
        "fp16": torch.cuda.is_available() and not any(token.startswith("--bf16") for token in argv),
        "output_dir": None,
    }
    parser.set_defaults(**{**defaults, **(CLIP_DEFAULTS if clip else {})})
    data, model, training, refinement = parser.parse_args_into_dataclasses(args=argv)
    data.dataset = data.dataset or spec.dataset
    data.num_classes = data.num_classes or spec.num_classes
    if data.dataset is None:
        raise ValueError(f"`{benchmark}` needs `--dataset`: a local folder ({_layouts_help()}) or a Hub dataset id.")
    if training.push_to_hub and not training.hub_model_id:
        raise ValueError("`--push_to_hub` needs `--hub_model_id <user-or-org>/<repo>`.")
    if training.lr_decay_epochs is None:  # the paper's 50 and 80 of 100 epochs, for any length
        training.lr_decay_epochs = [0.5 * training.num_train_epochs, 0.8 * training.num_train_epochs]
    if not training.projection and training.ln_loss_weight is None:
        training.ln_loss_weight = 0.0
    if training.output_dir is None or training.output_dir == "trainer_output":
        method = "joint" if model.joint else ("nsp" if training.projection else "seq")
        training.output_dir = os.path.join("runs", f"{spec.name}-{method}-seed{training.seed}")
    return RecipeArguments(benchmark=spec, data=data, model=model, training=training, refinement=refinement)


def _pre_parse(argv: Sequence[str], flag: str, kind: type) -> Any:
    """The value of one flag before the full parse (defaults depend on it)."""
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument(flag, type=kind)
    return getattr(pre_parser.parse_known_args(list(argv))[0], flag.lstrip("-"))


def _switches_as_booleans(argv: list[str]) -> list[str]:
    """``--projection on|off`` → ``true|false`` (argparse's bool parsing knows no on/off)."""
    words = {"on": "true", "off": "false"}
    out: list[str] = []
    for i, token in enumerate(argv):
        if token.startswith("--projection="):
            value = token.split("=", 1)[1]
            token = "--projection=" + words.get(value.lower(), value)
        elif i > 0 and argv[i - 1] == "--projection":
            token = words.get(token.lower(), token)
        out.append(token)
    return out


def _layouts_help() -> str:
    return "an `imagefolder` tree `<class>/<image>` (optionally under `train/` and `test/`), or a DomainNet root"
