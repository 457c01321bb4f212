# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the `vpt_nsp` PEFT method."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft.config import PeftConfig

from .._registration import PEFT_TYPE
from ..nullspace.state import TASK_WEIGHTINGS
from .adapter_files import WEIGHTS_FILE, check_safetensors_file
from .analytic_head import DEFAULT_RIDGE_GRID
from .heads import HEAD_INITS


PROMPT_INITS = ("uniform", "zeros")
THRESHOLD_MODES = ("adaptive", "times")
CLASSIFIERS = ("linear", "text", "analytic")


@dataclass
class VPTNSPConfig(PeftConfig):
    """Configuration of [`VPTNSPModel`]: deep visual prompts trained in the null space of earlier tasks.

    VPT-NSP² ("Visual Prompt Tuning in Null Space for Continual Learning", https://huggingface.co/papers/2406.05658)
    appends `prompt_length` learnable tokens to the input of every prompted transformer block (used as
    keys/values only, dropped after the block), and projects every prompt update with
    `Proj2 · u · Proj1`, built from statistics of earlier tasks. Projector 1 (`D × D`, from `C1`) protects the
    attention logits, projector 2 (`M × M`, from `C2`) the prompt part of the attention output. The classifier is
    the analytic head by default (the validation winner); `classifier="linear"` gives the paper's linear heads.
    CLIP-NSP² prompts the first blocks of CLIP's image tower (`prompt_layers=[0, 1, 2]`) and classifies with
    `classifier="text"`.

    Args:
        prompt_length (`int`, defaults to `4`):
            Number of prompt tokens M per prompted layer.
        prompt_layers (`list[int]`, *optional*):
            Indices of the image tower's transformer blocks that get prompts. Defaults to all blocks (the paper's
            CLIP variant: `[0, 1, 2]`). A text tower is never prompted.
        target_modules (`Union[list[str], str]`, *optional*):
            The transformer blocks to prompt, as in other PEFT methods (a regex matched against the full module
            name, or a list of names/suffixes). Defaults to every block of the supported architecture;
            `prompt_layers` then selects among them by index. Only whole transformer blocks can be targeted.
        prompt_init (`str`, defaults to `"uniform"`):
            Prompt initialisation: `"uniform"` (uniform in [-1, 1], the paper's) or `"zeros"`.
        threshold_mode (`str`, defaults to `"adaptive"`):
            How the null space is chosen from the eigenvalues: `"adaptive"` (point of largest curvature of the
            eigenvalue curve) or `"times"` (eigenvalues `≤ times_factor · s_min`).
        threshold_offset1 (`float`, defaults to `0.0`):
            `adaptive` only, projector 1: moves the split right by a fraction in [0, 1) of the null-space
            points, or by a whole count ≥ 1 (a smaller null space).
        threshold_offset2 (`float`, defaults to `0.0`):
            Same for projector 2.
        times_factor1 (`float`, defaults to `10.0`):
            `times` only, projector 1: the factor c ≥ 1.
        times_factor2 (`float`, defaults to `10.0`):
            Same for projector 2.
        eta1 (`float`, defaults to `0.97`):
            η of projector 1: `Proj1 = η·B + (1 − η)·I`, in [0, 1]. 1 is the pure null space.
        eta2 (`float`, defaults to `0.97`):
            η of projector 2.
        task_weighting (`str`, defaults to `"size"`):
            How the statistics of successive tasks combine: `"size"` (the mean over every row of every task, so a
            task weighs by its size: the authors' accumulation, whose per-batch-normalised sums differ from it only by
            a scale and the weight of each task's last partial batch) or `"equal"` (each task's per-row mean is
            added, so every task weighs the same).
        projected_layers (`list[int]`, *optional*):
            Block indices (a subset of `prompt_layers`) whose prompt updates are projected. Defaults to all
            prompted blocks; the others train freely (an ablation knob).
        head_init (`str`, defaults to `"trunc_normal"`):
            Initialisation of each new linear head: `"trunc_normal"` (weights N(0, 0.02²) truncated, zero bias: the
            authors' first head), `"pytorch"` (`nn.Linear`'s own) or `"authors"` (exactly what the authors' code
            does: the first head `"trunc_normal"`, the second a copy of the trained first head when both tasks have
            as many classes, later heads `"pytorch"`).
        classifier (`str`, defaults to `"analytic"`):
            The continual classifier: `"analytic"` ([`AnalyticClassifier`]: ridge regression on random ReLU
            features, solved in closed form from sums over every task, refit after each task in the null-space
            statistics pass, whose batches then need labels; linear heads per task train the prompts), the default
            because it won on validation data; `"linear"` (the paper's: one linear head per task, what the paper
            recipes use and classifier alignment needs) or `"text"` (CLIP-NSP²: scaled cosine similarity to
            class-name embeddings of the frozen text tower, with a trainable logit scale; the embeddings are
            computed by `add_task` and saved with the adapter).
        temperature (`float`, defaults to `1.0`):
            The training temperature T: the logits are the linear (or text) heads' outputs divided by it, so
            `softmax(logits)` (what `pipeline` shows) are the probabilities the model was trained to output. Set by
            [`NSPTrainer`] from `NSPConfig.temperature` when it creates the adapter (paper: 28, 25 or 30).
        analytic_projection_size (`int`, defaults to `5000`):
            `"analytic"` only: M, the number of random ReLU features (0: ridge regression on the pooled features).
            The adapter keeps `G` as a packed M(M+1)/2 float64 (100 MB for M = 5000) and the F × M projection.
        analytic_ridge (`float`, *optional*):
            `"analytic"` only: λ of the ridge regression. Defaults to choosing it per task among
            `analytic_ridge_grid` by the squared error on every fifth training sample of a fit on the others.
        analytic_ridge_grid (`list[float]`, defaults to powers of ten from 1e-4 to 1e10):
            `"analytic"` only: the candidates for λ.
        analytic_seed (`int`, defaults to `0`):
            `"analytic"` only: seeds the random projection (saved with the adapter).
        text_templates (`list[str]`, defaults to `["a photo of a {}."]`):
            `"text"` only: prompt templates with one `{}` for the class name; the class embedding is the normalised
            mean of the normalised template embeddings.
        logit_scale (`float`, *optional*):
            `"text"` only: initial log logit scale `s` (logits are `exp(s) · cos`). Defaults to the base model's
            `logit_scale` if it has one (`CLIPModel`; `ln 100` for OpenAI's weights), else `ln 100`.
        class_statistics (`bool`, defaults to `False`):
            Keep the per-class mean and covariance of the pooled image features of every task's training data in
            the adapter (`update_class_statistics`), the input of classifier alignment. Costs `F(F+1)/2` float32 per
            class (F = 768 for ViT-B/16: 1.2 MB per class).
        task_classes (`list[list[int]]`, defaults to `[]`):
            Class ids of every task's head, in task order. Filled by `add_task`; saved so that
            `PeftModel.from_pretrained` rebuilds the heads. Do not set it by hand.
        class_names (`list[str]`, defaults to `[]`):
            The name of every logit column (the classes of all tasks, in task order), unique. Filled by `add_task`;
            the model config's `id2label` follows it, so `pipeline("image-classification")` names the classes.
        base_model_architecture (`dict`, *optional*):
            What the adapter was created on (model class, depth, attention heads, hidden size); set on creation and
            checked when the adapter is loaded onto another model.
    """

    prompt_length: int = field(default=4, metadata={"help": "Number of prompt tokens M per prompted layer."})
    prompt_layers: Optional[list[int]] = field(
        default=None, metadata={"help": "Indices of the transformer blocks that get prompts. Defaults to all blocks."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": (
                "The transformer blocks to prompt (regex or list of names/suffixes). Defaults to every block of "
                "the supported architecture; `prompt_layers` then selects among them by index."
            )
        },
    )
    prompt_init: str = field(
        default="uniform", metadata={"help": "Prompt initialisation.", "choices": list(PROMPT_INITS)}
    )
    threshold_mode: str = field(
        default="adaptive", metadata={"help": "How the null space is chosen.", "choices": list(THRESHOLD_MODES)}
    )
    threshold_offset1: float = field(
        default=0.0, metadata={"help": "`adaptive`, projector 1: fraction in [0, 1) or count ≥ 1 to shift the split."}
    )
    threshold_offset2: float = field(
        default=0.0, metadata={"help": "`adaptive`, projector 2: fraction in [0, 1) or count ≥ 1 to shift the split."}
    )
    times_factor1: float = field(default=10.0, metadata={"help": "`times`, projector 1: the factor c ≥ 1."})
    times_factor2: float = field(default=10.0, metadata={"help": "`times`, projector 2: the factor c ≥ 1."})
    eta1: float = field(default=0.97, metadata={"help": "η of projector 1, in [0, 1]."})
    eta2: float = field(default=0.97, metadata={"help": "η of projector 2, in [0, 1]."})
    task_weighting: str = field(
        default="size",
        metadata={"help": "How the statistics of successive tasks combine.", "choices": list(TASK_WEIGHTINGS)},
    )
    projected_layers: Optional[list[int]] = field(
        default=None, metadata={"help": "Indices of the prompted blocks whose updates are projected. Default: all."}
    )
    head_init: str = field(
        default="trunc_normal",
        metadata={"help": "Initialisation of each new linear head.", "choices": list(HEAD_INITS)},
    )
    classifier: str = field(
        default="analytic",
        metadata={
            "help": (
                "The continual classifier: `analytic` (closed-form ridge head, the validation winner), `linear` (the "
                "paper's per-task linear heads) or `text` (CLIP-NSP²)."
            ),
            "choices": list(CLASSIFIERS),
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Training temperature: logits are the heads' outputs divided by it."}
    )
    analytic_projection_size: int = field(
        default=5000, metadata={"help": "`analytic` classifier: M random ReLU features (0: the features themselves)."}
    )
    analytic_ridge: Optional[float] = field(
        default=None, metadata={"help": "`analytic` classifier: λ; default: chosen per task on held-out samples."}
    )
    analytic_ridge_grid: list[float] = field(
        default_factory=lambda: list(DEFAULT_RIDGE_GRID),
        metadata={"help": "`analytic` classifier: candidates for λ."},
    )
    analytic_seed: int = field(default=0, metadata={"help": "`analytic` classifier: seed of the random projection."})
    text_templates: list[str] = field(
        default_factory=lambda: ["a photo of a {}."],
        metadata={"help": "`text` classifier: prompt templates with one `{}` for the class name."},
    )
    logit_scale: Optional[float] = field(
        default=None,
        metadata={"help": "`text` classifier: initial log logit scale; default: the base model's, else ln 100."},
    )
    class_statistics: bool = field(
        default=False,
        metadata={"help": "Keep per-class feature means and covariances in the adapter (for classifier alignment)."},
    )
    task_classes: list[list[int]] = field(
        default_factory=list, metadata={"help": "Class ids of every task's head; filled by `add_task`."}
    )
    class_names: list[str] = field(
        default_factory=list, metadata={"help": "The name of every logit column; filled by `add_task`."}
    )
    base_model_architecture: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "What the adapter was created on; set on creation."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.task_type is not None:
            raise ValueError(
                f"`task_type` must be None for VPT-NSP² (got {self.task_type!r}): the method brings its own "
                "classifier heads."
            )
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int) or self.prompt_length < 1:
            raise ValueError(f"`prompt_length` must be an integer ≥ 1, got {self.prompt_length!r}.")
        self.prompt_layers = _layer_list("prompt_layers", self.prompt_layers)
        self.projected_layers = _layer_list("projected_layers", self.projected_layers)
        if self.prompt_layers is not None and self.projected_layers is not None:
            extra = sorted(set(self.projected_layers) - set(self.prompt_layers))
            if extra:
                raise ValueError(
                    f"`projected_layers` {extra} are not in `prompt_layers` {self.prompt_layers}: only prompted "
                    "layers can be projected."
                )
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        _check_choice("prompt_init", self.prompt_init, PROMPT_INITS)
        _check_choice("threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        _check_choice("task_weighting", self.task_weighting, TASK_WEIGHTINGS)
        _check_choice("head_init", self.head_init, HEAD_INITS)
        _check_choice("classifier", self.classifier, CLASSIFIERS)
        if (
            not isinstance(self.text_templates, (list, tuple))
            or not self.text_templates
            or not all(isinstance(t, str) and t.count("{}") == 1 for t in self.text_templates)
        ):
            raise ValueError(
                "`text_templates` must be a non-empty list of strings with one `{}` each, got "
                f"{self.text_templates!r}."
            )
        self.text_templates = list(self.text_templates)
        for name in ("threshold_offset1", "threshold_offset2"):
            value = getattr(self, name)
            if not _finite(value) or value < 0 or (value >= 1 and value != int(value)):
                raise ValueError(f"`{name}` must be a fraction in [0, 1) or a whole count ≥ 1, got {value!r}.")
        for name in ("times_factor1", "times_factor2"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a finite number ≥ 1, got {getattr(self, name)!r}.")
        for name in ("eta1", "eta2"):
            if not _finite(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)!r}.")
        if not _finite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"`temperature` must be a finite number > 0, got {self.temperature!r}.")
        size = self.analytic_projection_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"`analytic_projection_size` must be an integer ≥ 0, got {size!r}.")
        if self.analytic_ridge is not None and (not _finite(self.analytic_ridge) or self.analytic_ridge < 0):
            raise ValueError(
                f"`analytic_ridge` must be None (chosen on held-out data) or a number ≥ 0, got "
                f"{self.analytic_ridge!r}."
            )
        grid = self.analytic_ridge_grid
        if not isinstance(grid, (list, tuple)) or not grid or not all(_finite(v) and v > 0 for v in grid):
            raise ValueError(f"`analytic_ridge_grid` must be a non-empty list of numbers > 0, got {grid!r}.")
        self.analytic_ridge_grid = [float(v) for v in grid]
        if self.logit_scale is not None and not _finite(self.logit_scale):
            raise ValueError(f"`logit_scale` must be a finite number, got {self.logit_scale!r}.")
        if not isinstance(self.task_classes, list) or not all(
            isinstance(classes, list) and classes for classes in self.task_classes
        ):
            raise ValueError(
                "`task_classes` must be a list of non-empty lists of class ids (it is set by `add_task`)."
            )
        seen = [c for classes in self.task_classes for c in classes]
        if self.class_names and len(self.class_names) != len(seen):
            raise ValueError(
                f"`class_names` names {len(self.class_names)} classes but `task_classes` holds {len(seen)}: both are "
                "set by `add_task`; this adapter config was edited by hand or is damaged."
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"`class_names` must be unique, got {self.class_names}.")
        if self.logit_scale is not None and self.classifier != "text":
            warnings.warn("`logit_scale` only applies to `classifier='text'`; it is ignored.")
        if self.threshold_mode == "times" and (self.threshold_offset1 or self.threshold_offset2):
            warnings.warn("`threshold_offset1/2` only apply to `threshold_mode='adaptive'`; they are ignored.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """PEFT's loader, refusing a `revision` for a local folder (it would be ignored, loading another stage) and
        a damaged local weights file (named, before PEFT reads it)."""
        if kwargs.get("revision") is not None and os.path.isdir(pretrained_model_name_or_path):
            raise ValueError(
                f"`revision={kwargs['revision']!r}` selects a revision of a Hub repository, but "
                f"`{pretrained_model_name_or_path}` is a local folder, which has none: load the stage's own folder "
                f"(e.g. `<output_dir>/tasks/{kwargs['revision']}`) without `revision`."
            )
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        folder = os.path.join(pretrained_model_name_or_path, subfolder or "")
        weights = os.path.join(folder, WEIGHTS_FILE)
        if os.path.isfile(weights):
            check_safetensors_file(weights)  # before PEFT reads it: a damaged file is named with the way out
        # Runtime only (not a field, never saved): where the checkpoint comes from, for the errors of the load.
        config.loaded_from = weights if os.path.isdir(folder) else f"{pretrained_model_name_or_path} (Hub)"
        return config


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def _layer_list(name: str, value) -> Optional[list[int]]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, (list, tuple, set))
        or not value
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    ):
        raise ValueError(
            f"`{name}` must be None (all layers) or a non-empty list of layer indices ≥ 0, got {value!r}."
        )
    return sorted(set(value))
