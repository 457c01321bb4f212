# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The recipes' shared command line: data, model and prompt arguments, plus [`NSPConfig`], whose defaults are the
authors' configuration of each benchmark (their public code, ``zugexiaodui/VPTinNSforCL``, is the reference).

Per benchmark (VPT-NSP², ViT-B/16 AugReg ImageNet-21k): temperature 28 / 25 / 30 / 30 and η 0.97 / 0.95 / 0.94 / 0.95
for 10-split CIFAR-100 / 20-split CIFAR-100 / ImageNet-R / DomainNet; AutoAugment's CIFAR10 policy and bicubic crops
for CIFAR-100, the ImageNet policy and bilinear crops otherwise; evaluation resizes CIFAR to 224 (bicubic), the others
to 256 × 256 then centre-crops 224. Shared: Adam with L2 weight decay 5e-5 inside the moments, lr 0.01, batch 256, 10
epochs over the task's data repeated 10 times with lr × 0.1 after epochs 4 and 7 (passes 40 and 70 of 100; timm's
schedule as the authors step it; 40 % and 70 % of any other `--num_train_epochs`), no gradient clipping, fp16 on CUDA,
prompt length 4 in every block, adaptive threshold, statistics weighted by task size, the authors' head initialisation,
seed 2024. CLIP-NSP² (``--classifier text``): prompts in image blocks 0–3, lr 0.001, batch 220, 10 epochs × 2 repeats
(decays after 4 and 7), η 0.98, temperature 1, classifier alignment after every task, CLIP's preprocessing.

Your own data (``imagefolder``, `recipes/train_imagefolder.py`): the paper's values tuned for its benchmarks give way
to the library's and the quickstart's: temperature 1 (`NSPConfig`'s default; the quickstart chose it on validation
data), η 0.97 (`VPTNSPConfig`'s), 5 tasks, 5 epochs without repeats, batch 32, the analytic head (the
quickstart's, the validation winner; `--classifier linear`: linear heads with classifier alignment); evaluation resizes to the model's input size as its image processor (and so `pipeline`) does.
Optimizer, schedule shape, prompts and backbone stay the authors'.

About 520 lines: the per-benchmark table of the authors' values and the parser that applies it are one concern.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from ..continual.class_names import benchmark_text_templates
from ..continual.stages import method_name
from ..trainer import NSPConfig
from ..tuner.config import VPTNSPConfig


DATA_LAYOUTS = ("auto", "hub", "imagefolder", "domainnet", "authors")
CLASSIFIERS = ("linear", "analytic", "text")
#: The authors' backbone (timm format, converted on load by `peft_nsp.timm_vit`).
AUTHORS_BACKBONE = "timm/vit_base_patch16_224.augreg_in21k"
CLIP_BACKBONE = "openai/clip-vit-base-patch16"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the paper: its data and the settings that differ between benchmarks (the authors' scripts)."""

    name: str
    num_tasks: int
    temperature: float
    eta: float
    autoaugment_policy: str
    """AutoAugment policy of the training transform (``"cifar10"`` or ``"imagenet"``)."""
    crop_interpolation: str
    """Interpolation of RandomResizedCrop (``"bicubic"`` or ``"bilinear"``)."""
    eval_resize: Optional[int]
    """Evaluation: resize to this square then centre-crop the model's size; ``None``: resize straight to it."""
    eval_interpolation: str
    dataset: Optional[str] = None
    """The Hub dataset (CIFAR-100); the others need `--dataset <local folder>`."""
    authors_lists: Optional[str] = None
    """The authors' split lists shipped in ``authors_splits/`` (``imagenet_r``, ``sdomain``)."""
    official_num_classes: Optional[int] = None
    """With DomainNet's official lists (``--data_layout domainnet``): keep the N most frequent classes."""
    dataset_help: str = ""
    """What ``--dataset`` takes (the recipe's ``--help``)."""
    text_templates: Optional[str] = None
    """The shipped prompt templates for ``--classifier text`` (default: the family's)."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """Training defaults replacing the authors' (your own data); none for the paper's benchmarks."""
    description: str = "Defaults: the authors' configuration of this benchmark (their code, zugexiaodui/VPTinNSforCL)."
    """Where the defaults come from (the recipe's ``--help``)."""

    @property
    def family(self) -> str:
        """The dataset family (``cifar100``, ``imagenet-r``, ``domainnet``)."""
        return self.name.rsplit("-", 1)[0]


_IMAGEFOLDER_HELP = (
    "an `imagefolder` tree `<class>/<image>` (optionally under `train/` and `test/`; without a test "
    "split `--test_fraction` of every class is held out)"
)
_CIFAR = dict(
    autoaugment_policy="cifar10",
    crop_interpolation="bicubic",
    eval_resize=None,
    eval_interpolation="bicubic",
    dataset="uoft-cs/cifar100",
    dataset_help=f"A Hub dataset id, or {_IMAGEFOLDER_HELP}.",
)
_LARGE_IMAGES = dict(
    autoaugment_policy="imagenet", crop_interpolation="bilinear", eval_resize=256, eval_interpolation="bilinear"
)
BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark("cifar100-10", num_tasks=10, temperature=28.0, eta=0.97, **_CIFAR),
        Benchmark("cifar100-20", num_tasks=20, temperature=25.0, eta=0.95, **_CIFAR),
        Benchmark(
            "imagenet-r-10",
            num_tasks=10,
            temperature=30.0,
            eta=0.94,
            authors_lists="imagenet_r",
            dataset_help="Required: the ImageNet-R root (the folder of `n01443537/`, …), read with the authors' "
            f"split lists; or, with `--data_layout imagefolder`, {_IMAGEFOLDER_HELP}; or a Hub dataset id.",
            **_LARGE_IMAGES,
        ),
        Benchmark(
            "domainnet-10",
            num_tasks=10,
            temperature=30.0,
            eta=0.95,
            authors_lists="sdomain",
            official_num_classes=200,
            dataset_help="Required: the DomainNet root (the folder of `clipart/`, `real/`, …), read with the "
            "authors' split lists; or with its official `<domain>_{train,test}.txt` lists (`--data_layout "
            f"domainnet`: the 200 most frequent classes); or, with `--data_layout imagefolder`, "
            f"{_IMAGEFOLDER_HELP}; or a Hub dataset id.",
            **_LARGE_IMAGES,
        ),
        # Your own data: not a benchmark of the paper, so no paper numbers; defaults in the module docstring.
        Benchmark(
            "imagefolder",
            num_tasks=5,
            temperature=1.0,
            eta=0.97,
            autoaugment_policy="imagenet",
            crop_interpolation="bilinear",
            eval_resize=None,
            eval_interpolation="bilinear",
            text_templates="cifar100",
            dataset_help=f"Required: your images, as {_IMAGEFOLDER_HELP}, or a Hub dataset id with an image and "
            "a `ClassLabel` column.",
            training={
                "num_train_epochs": 5,
                "dataset_repeats": 1,
                "per_device_train_batch_size": 32,
                "classifier": "analytic",
                "classifier_alignment": True,  # with `--classifier linear`
            },
            description="Defaults for data that is not a benchmark of the paper: temperature 1 (NSPConfig's; "
            "the quickstart chose it on validation data), η 0.97 (VPTNSPConfig's), 5 tasks, 5 epochs without "
            "repeats, batch 32 and the analytic head (the validation winner, as in the quickstart; `--classifier "
            "linear`: linear heads with classifier alignment); evaluation resizes to the model's input size as its "
            "image processor does. Backbone, optimizer, schedule shape, augmentation and prompts: the authors'.",
        ),
    )
}

#: The authors' training recipe (VPT-NSP², ViT), shared by all benchmarks.
AUTHORS_TRAINING: dict[str, Any] = {
    "learning_rate": 0.01,
    "weight_decay": 5e-5,
    "weight_decay_mode": "l2",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "optim": "adamw_torch",  # replaced by torch Adam with L2 decay (`weight_decay_mode="l2"`)
    "num_train_epochs": 10,
    "dataset_repeats": 10,
    "lr_decay_factor": 0.1,  # after 40 % and 70 % of the epochs: `parse_recipe_arguments`
    "max_grad_norm": 0.0,
    "per_device_train_batch_size": 256,
    "per_device_eval_batch_size": 100,
    "statistics_batch_size": 100,
    "seed": 2024,
    "logging_steps": 10,
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "dataloader_num_workers": 4,
}

#: CLIP-NSP² (``--classifier text``): what differs from the ViT recipe.
AUTHORS_CLIP_TRAINING: dict[str, Any] = {
    "learning_rate": 0.001,
    "per_device_train_batch_size": 220,
    "dataset_repeats": 2,
    "temperature": 1.0,
    "classifier_alignment": True,
}


@dataclass
class DataArguments:
    """Where the images come from."""

    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "A Hub dataset id, or a local folder: the ImageNet-R / DomainNet root (read with the authors' "
            "split lists), an `imagefolder` tree, or a DomainNet root with the official `*_train.txt` / `*_test.txt`. "
            "Each recipe names its default (`Benchmark.dataset_help`)."
        },
    )
    data_layout: str = field(
        default="auto",
        metadata={
            "help": "How to read `dataset`: `authors` (the paper's split lists, the default for ImageNet-R and "
            "DomainNet folders), `imagefolder`, `domainnet` (official lists), `hub`; `auto` picks.",
            "choices": list(DATA_LAYOUTS),
        },
    )
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    test_split: str = field(default="test", metadata={"help": "Test split name; made from `train` if missing."})
    test_fraction: float = field(
        default=0.2,
        metadata={"help": "Per-class fraction held out as test data when an imagefolder has no test split."},
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seeds the held-out test split (fixed, so every training seed scores the same)."}
    )
    num_classes: Optional[int] = field(
        default=None,
        metadata={"help": "Keep the N most frequent training classes (DomainNet's official lists: 200 by default)."},
    )
    max_train_samples_per_class: Optional[int] = field(
        default=None, metadata={"help": "Subsample each class of the training data (quick runs)."}
    )
    max_test_samples_per_class: Optional[int] = field(default=None, metadata={"help": "Same for the test data."})
    image_size: Optional[int] = field(default=None, metadata={"help": "Input side (default: the model's)."})
    auto_augment: bool = field(default=True, metadata={"help": "AutoAugment before RandomResizedCrop (paper: on)."})

    def __post_init__(self) -> None:
        if self.data_layout not in DATA_LAYOUTS:
            raise ValueError(f"`--data_layout` must be one of {list(DATA_LAYOUTS)}, got {self.data_layout!r}.")
        if self.test_split == self.train_split:
            raise ValueError(
                f"`--test_split` and `--train_split` are both `{self.train_split}`: evaluate on other data."
            )
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"`--test_fraction` must be in (0, 1), got {self.test_fraction}.")
        for name in ("num_classes", "max_train_samples_per_class", "max_test_samples_per_class", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`--{name}` must be ≥ 1, got {value}.")


@dataclass
class ModelArguments:
    """The pre-trained model and the prompts added to it."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": f"A ViT-family checkpoint: a transformers or timm-format Hub id or folder (default: the authors' "
            f"`{AUTHORS_BACKBONE}`; `--classifier text`: `{CLIP_BACKBONE}`)."
        },
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention backend: `sdpa` or `eager`."})
    num_tasks: Optional[int] = field(default=None, metadata={"help": "Number of tasks."})
    joint: bool = field(default=False, metadata={"help": "Train all classes as one task (the upper bound)."})
    continue_from: Optional[str] = field(
        default=None,
        metadata={
            "help": "Continue a finished adapter with the dataset's other classes: a stage folder, or `repo@task-<t>` "
            "on the Hub (`--num_tasks` new tasks follow its tasks)."
        },
    )
    prompt_length: int = field(default=4, metadata={"help": "Prompt tokens per layer (paper: 4)."})
    prompt_layers: Optional[list[int]] = field(default=None, metadata={"help": "Prompted blocks (default: all)."})
    threshold_mode: str = field(default="adaptive", metadata={"help": "`adaptive` or `times` null-space threshold."})
    eta: Optional[float] = field(default=None, metadata={"help": "η of both projectors."})
    task_weighting: str = field(default="size", metadata={"help": "How task statistics combine: `size` or `equal`."})
    head_init: str = field(default="authors", metadata={"help": "Head initialisation (default: the authors')."})
    classifier: str = field(
        default="linear",
        metadata={
            "help": "`linear` heads, `analytic`: the closed-form ridge head refit after every task (classifier "
            "alignment off), or `text`: CLIP-NSP²'s cosine similarity to the class names' text embeddings "
            "(CLIP/SigLIP models; switches to the authors' CLIP hyperparameters).",
            "choices": list(CLASSIFIERS),
        },
    )

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"`--classifier` must be one of {list(CLASSIFIERS)}, got {self.classifier!r}.")
        if self.model_name_or_path is None:
            self.model_name_or_path = CLIP_BACKBONE if self.classifier == "text" else AUTHORS_BACKBONE

    analytic_projection_size: int = field(
        default=5000, metadata={"help": "`--classifier analytic`: random ReLU features M (0: the features)."}
    )
    analytic_ridge: Optional[float] = field(
        default=None, metadata={"help": "`--classifier analytic`: λ (default: chosen per task on held-out samples)."}
    )

    def peft_config(self, benchmark: Benchmark, classifier_alignment: bool) -> VPTNSPConfig:
        eta = benchmark.eta if self.eta is None else self.eta
        text = {
            "text_templates": benchmark_text_templates(benchmark.text_templates or benchmark.family.replace("-", "_"))
        }
        return VPTNSPConfig(
            prompt_length=self.prompt_length,
            prompt_layers=self.prompt_layers,
            threshold_mode=self.threshold_mode,
            eta1=eta,
            eta2=eta,
            task_weighting=self.task_weighting,
            head_init=self.head_init,
            classifier=self.classifier,
            analytic_projection_size=self.analytic_projection_size,
            analytic_ridge=self.analytic_ridge,
            class_statistics=classifier_alignment,
            **(text if self.classifier == "text" else {}),
        )


@dataclass
class RecipeArguments:
    """Everything a recipe run needs, parsed."""

    benchmark: Benchmark
    data: DataArguments
    model: ModelArguments
    training: NSPConfig

    @property
    def num_tasks(self) -> int:
        return self.model.num_tasks or self.benchmark.num_tasks

    @property
    def method(self) -> str:
        return method_name(
            self.training.projection, self.model.joint, self.model.classifier, self.training.classifier_alignment
        )

    @property
    def peft_config(self) -> VPTNSPConfig:
        return self.model.peft_config(self.benchmark, self.training.classifier_alignment)


def resolve_benchmark(name: str, argv: Sequence[str]) -> Benchmark:
    """A benchmark by name (``cifar100-10``) or by family (``cifar100``: the split follows ``--num_tasks``).

    A family with a task count the paper did not run keeps the family's first settings under a new name (no
    published numbers to compare with).
    """
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    family = [spec for spec in BENCHMARKS.values() if spec.family == name]
    if not family:
        families = sorted({spec.family for spec in BENCHMARKS.values()})
        raise ValueError(f"Unknown benchmark {name!r}; known: {sorted(BENCHMARKS)} or the families {families}.")
    num_tasks = _pre_parse(argv, "--num_tasks", int)
    if num_tasks is None:
        return family[0]
    named = f"{name}-{num_tasks}"
    return BENCHMARKS.get(named) or dataclasses.replace(family[0], name=named, num_tasks=num_tasks)


#: The `TrainingArguments` options a recipe's ``--help`` lists, next to the recipe's own and `NSPConfig`'s;
#: ``--help_all`` lists every option (all are accepted).
HELP_TRAINING_OPTIONS = (
    "output_dir",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "fp16",
    "bf16",
    "use_cpu",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "logging_steps",
    "save_strategy",
    "save_total_limit",
    "report_to",
    "disable_tqdm",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
)


def recipe_parser(spec: Benchmark, argv: Sequence[str]) -> HfArgumentParser:
    """The command line of a recipe for ``spec``: its defaults (the authors', or `Benchmark.training`) and a
    ``--help`` that shows them, with the recipe's data and the TrainingArguments worth knowing (``--help_all``: all).

    Without ``--per_device_train_batch_size`` the batch is split over the launched processes (``WORLD_SIZE``).
    fp16 mixed precision is on by default on CUDA unless ``--bf16`` is given; memory is pinned only for CUDA.
    """
    epilog = "Every other `transformers.TrainingArguments` option works too: `--help_all` lists them."
    dataset = "[--dataset DATASET]" if spec.dataset else "--dataset DATASET"
    parser = HfArgumentParser(
        (DataArguments, ModelArguments, NSPConfig),
        formatter_class=_HelpFormatter,
        usage=f"%(prog)s {dataset} [--num_tasks N] [option ...]",
        description=spec.description,
        epilog=epilog,
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    clip = _pre_parse(argv, "--classifier", str) == "text"
    cuda = torch.cuda.is_available() and not _pre_parse(argv, "--use_cpu", string_to_bool, nargs="?", const=True)
    defaults = {
        **AUTHORS_TRAINING,
        "temperature": spec.temperature,
        **(AUTHORS_CLIP_TRAINING if clip else {}),
        **spec.training,
    }
    defaults["per_device_train_batch_size"] = max(1, defaults["per_device_train_batch_size"] // world_size)
    defaults["fp16"] = cuda and not any(token.startswith("--bf16") for token in argv)
    defaults["dataloader_pin_memory"] = cuda  # pinning without CUDA only warns, once per DataLoader
    defaults["eta"] = 0.98 if clip else spec.eta
    if clip:
        defaults["prompt_layers"] = [0, 1, 2, 3]
    parser.set_defaults(**defaults, dataset=spec.dataset, num_tasks=spec.num_tasks, output_dir=None)
    described = {
        "dataset": spec.dataset_help,
        "output_dir": f"Where the run goes; re-running the same command resumes it (default: "
        f"`runs/{spec.name}-<method>-seed<seed>`, `<method>` being `nsp`, `seq` (`--projection false`) or `joint`).",
        "lr_decay_epochs": "Epochs after which the learning rate is multiplied by `--lr_decay_factor`, replacing "
        "`--lr_scheduler_type` (default: after 40 %% and 70 %% of `--num_train_epochs`, the authors' schedule).",
    }
    shown = {item.name for item in dataclasses.fields(NSPConfig)} - {
        item.name for item in dataclasses.fields(TrainingArguments)
    }
    shown |= {
        *HELP_TRAINING_OPTIONS,
        *(item.name for item in dataclasses.fields(DataArguments)),
        *(item.name for item in dataclasses.fields(ModelArguments)),
    }
    for action in parser._actions:  # argparse has no public API to edit an added argument
        if action.dest in described:
            action.help = described[action.dest]
        elif action.dest not in shown | {"help"} and "--help_all" not in argv:
            action.help = argparse.SUPPRESS
    parser.add_argument("--help_all", action="help", help="Show every option, with all of `TrainingArguments`.")
    return parser


def parse_recipe_arguments(benchmark: str, argv: Sequence[str] | None = None) -> RecipeArguments:
    """Parse a recipe's command line with the defaults of ``benchmark`` (see [`resolve_benchmark`],
    [`recipe_parser`]).

    ``--projection false`` gives VPT-Seq (`NSPConfig` then turns the LayerNorm loss off unless ``--ln_loss_weight``
    is given, as the authors' code does).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    spec = resolve_benchmark(benchmark, argv)
    data, model, training = recipe_parser(spec, argv).parse_args_into_dataclasses(args=argv)
    if data.dataset is None:
        raise ValueError(f"`{benchmark}` needs `--dataset`: a local folder ({_layouts_help()}) or a Hub dataset id.")
    if training.push_to_hub and not training.hub_model_id:
        raise ValueError("`--push_to_hub` needs `--hub_model_id <user-or-org>/<repo>`.")
    if training.lr_decay_epochs is None:  # the authors' decays: after epochs 4 and 7 of 10, for any length
        training.lr_decay_epochs = [round(fraction * training.num_train_epochs, 6) for fraction in (0.4, 0.7)]
    if model.classifier == "analytic" and not any(
        a.startswith(("--classifier_alignment", "--classifier-alignment")) for a in argv
    ):
        training.classifier_alignment = False  # the analytic head is the solution over every class already
    if training.output_dir is None or training.output_dir == "trainer_output":
        method = "joint" if model.joint else ("nsp" if training.projection else "seq")
        training.output_dir = os.path.join("runs", f"{spec.name}-{method}-seed{training.seed}")
    return RecipeArguments(benchmark=spec, data=data, model=model, training=training)


def resolved_configuration(args: RecipeArguments) -> dict[str, Any]:
    """What a recipe will train, flattened: the values a protocol comparison reads (see `tests/test_recipes.py`)."""
    training, config = args.training, args.peft_config
    return {
        "model": args.model.model_name_or_path,
        "optimizer": "Adam, L2 weight decay" if training.weight_decay_mode == "l2" else str(training.optim),
        "weight_decay": training.weight_decay,
        "betas": (training.adam_beta1, training.adam_beta2),
        "learning_rate": training.learning_rate,
        "batch_size": training.per_device_train_batch_size * training.world_size,
        "passes_over_data": training.num_train_epochs * training.dataset_repeats,
        "lr_decays_after_pass": [epoch * training.dataset_repeats for epoch in training.lr_decay_epochs or []],
        "lr_decay_factor": training.lr_decay_factor,
        "max_grad_norm": training.max_grad_norm,
        "temperature": training.temperature,
        "eta": (config.eta1, config.eta2),
        "threshold_mode": config.threshold_mode,
        "prompt_length": config.prompt_length,
        "prompt_layers": config.prompt_layers,
        "task_weighting": config.task_weighting,
        "head_init": config.head_init if config.classifier == "linear" else "text embeddings",
        "ln_loss_weight": training.ln_loss_weight,
        "classifier_alignment": training.classifier_alignment,
        "train_transform": (args.benchmark.autoaugment_policy, args.benchmark.crop_interpolation, "no flip"),
        "eval_transform": "clip"
        if config.classifier == "text"
        else (args.benchmark.eval_resize, args.benchmark.eval_interpolation),
        "splits": "authors' lists" if args.benchmark.authors_lists else args.benchmark.dataset,
        "seed": training.seed,
    }


def _pre_parse(argv: Sequence[str], flag: str, kind: Callable[[str], Any], **options: Any) -> Any:
    """The value of one flag before the full parse (defaults depend on it)."""
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument(flag, type=kind, **options)
    return getattr(pre_parser.parse_known_args(list(argv))[0], flag.lstrip("-"))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when there is one: the help text describes what ``None`` stands for."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _layouts_help() -> str:
    return (
        "the ImageNet-R or DomainNet root (the authors' split lists), an `imagefolder` tree `<class>/<image>` "
        "(optionally under `train/` and `test/`), or a DomainNet root with the official lists"
    )
