# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The `vpt_nsp` tuner: the PEFT contract (injection, adapters, checkpoints) and the task API.

Siblings: `layer.py` (prompted blocks), `heads.py` / `text_classifier.py` / `analytic_head.py` (the continual
classifiers), `router.py` (the forward hooks that answer through the heads), `null_space_update.py` (folding a task
into the null space: [`NullSpaceMixin`]), `classifier_alignment.py` (class statistics and alignment:
[`ClassStatisticsMixin`]), `checkpoint_keys.py` (which keys are ours, loading other layouts), `batches.py` (the data
passes' default `forward_fn`). None of them imports this module. It stays above 500 lines because the PEFT hooks and
the task API both read and write the same per-adapter containers (prompts, heads, projection, statistics); split,
each half would reach into the other's state.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .._torch_utils import module_device
from .analytic_head import AnalyticClassifier
from .architectures import (
    BLOCK_CLASSES,
    architecture,
    backbone_module,
    describe_model,
    pooled_size,
    vision_config,
)
from .batches import ForwardFn, forward_pixel_values
from .checkpoint_keys import CONTAINERS, adapter_key, describe_architecture, remap_adapter_state_dict
from .class_statistics import ClassFeatureStatistics
from .classifier_alignment import ClassStatisticsMixin
from .config import VPTNSPConfig
from .heads import ContinualClassifier, TaskHeads
from .layer import VPTNSPLayer
from .null_space_update import NullSpaceLayerReport, NullSpaceMixin, raise_if_not_finite
from .router import HeadRouter, VPTNSPModelOutput
from .text_classifier import TextEmbeddingClassifier, encode_class_names


__all__ = ["NullSpaceLayerReport", "VPTNSPModel", "VPTNSPModelOutput"]


class VPTNSPModel(NullSpaceMixin, ClassStatisticsMixin, BaseTuner):
    """VPT-NSP²: deep visual prompts for continual learning, updated in the null space of earlier tasks.

    Creates a [`VPTNSPLayer`] around every selected transformer block of the image tower of a supported model and
    a continual classifier: [`AnalyticClassifier`] (the default: a closed-form ridge head refit by
    `update_null_space`, linear heads per task train the prompts), [`ContinualClassifier`] (`classifier="linear"`:
    the paper's one linear head per task) or, for CLIP-NSP², [`TextEmbeddingClassifier`] (scaled cosine similarity
    to class-name embeddings of the frozen text tower).
    Paper: https://huggingface.co/papers/2406.05658.

    The heads live in the backbone module (the model itself, or the `vit`/`deit`/`dinov2` it wraps), so an adapter's
    tensors have the same names on `ViTModel` and `ViTForImageClassification`, and transformers' own `load_adapter`
    (hence `pipeline("image-classification", model=<adapter>)`) fills them. Logit column ``i`` is class
    ``class_names()[i]``; the model config's ``id2label`` says the same.

    On `CLIPModel`/`SiglipModel` a call without `input_ids` (`model(pixel_values=...)`) runs the image tower only
    and returns the head's logits; a call with `input_ids` is the base model's image–text forward. The text tower
    is never prompted nor trained. The head reads CLIP's projected image embedding through a copy of
    `visual_projection` kept in the adapter: frozen while tasks train, trained by classifier alignment.

    Args:
        model ([`transformers.PreTrainedModel`]): a supported model (`ViTModel`, `ViTForImageClassification`,
            `DeiTModel`, `DeiTForImageClassification`, `Dinov2Model`, `Dinov2ForImageClassification`,
            `CLIPVisionModel`, `CLIPModel`, `SiglipVisionModel`, `SiglipModel`).
        config ([`VPTNSPConfig`]): the configuration.
        adapter_name (`str`): the adapter name.

    Example:
        >>> import peft_nsp
        >>> from peft import get_peft_model
        >>> from transformers import ViTModel
        >>> model = get_peft_model(ViTModel.from_pretrained(path), peft_nsp.VPTNSPConfig(prompt_length=4))
        >>> model.add_task(["cat", "dog"])  # a head over two named classes (ids 0 and 1)
        >>> ...  # train the task with `model.attach_null_space_projection(optimizer)`, or use `NSPTrainer`
        >>> model.update_null_space(train_loader)  # statistics → projectors; fits the analytic head (with labels)

    **Attributes**:
        - **model** ([`transformers.PreTrainedModel`]) -- the adapted model.
        - **peft_config** ([`VPTNSPConfig`]) -- the configuration of each adapter.
        - **vpt_nsp_head** (`nn.ModuleDict`) -- the continual classifier of each adapter.
        - **vpt_nsp_projection** (`nn.ModuleDict`) -- each adapter's copy of the image projection (CLIP).
        - **vpt_nsp_class_statistics** (`nn.ModuleDict`) -- per-class feature statistics (`class_statistics=True`).
    """

    prefix: str = "vpt_nsp_"
    tuner_layer_cls = VPTNSPLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ injection
    def _pre_injection_hook(self, model: nn.Module, config: VPTNSPConfig, adapter_name: str) -> None:
        self._architecture = architecture(model)  # raises for unsupported models
        backbone = backbone_module(model, self._architecture)
        for name in CONTAINERS:
            if name not in backbone._modules:
                backbone.add_module(name, nn.ModuleDict())
        if "_router" not in self.__dict__:
            self._router = HeadRouter(model, self._architecture, self).install()

    def _prepare_adapter_config(self, peft_config: VPTNSPConfig, model_config: dict) -> VPTNSPConfig:
        """Check the model against what the adapter was made on, and resolve the prompted blocks.

        The blocks become a regex over the names relative to the backbone (``(?:.*\\.)?layers\\.(?:0|1)``), so the
        saved `target_modules` select the same blocks on `ViTModel` and `ViTForImageClassification`.
        """
        model = self.model
        current = describe_model(model)
        recorded = peft_config.base_model_architecture
        if recorded is None:
            peft_config.base_model_architecture = current
        else:
            different = {
                key: (recorded[key], current[key])
                for key in current
                if key in recorded
                if key != "model_class" and recorded[key] != current[key]
            }
            if different:
                details = ", ".join(
                    f"{key} {old} (adapter) vs {new} (this model)" for key, (old, new) in different.items()
                )
                raise ValueError(
                    f"This VPT-NSP² adapter was made on a `{recorded.get('model_class')}` with {describe_architecture(recorded)}, "
                    f"but this `{current['model_class']}` differs: {details}. Load it onto the model it was trained on "
                    f"(`base_model_name_or_path`={peft_config.base_model_name_or_path!r})."
                )
        blocks = _block_names(model, self._architecture.vision_prefix)
        if not blocks:
            raise ValueError(f"No transformer blocks ({', '.join(c.__name__ for c in BLOCK_CLASSES)}) found.")
        indices = range(len(blocks)) if peft_config.prompt_layers is None else peft_config.prompt_layers
        if max(indices) >= len(blocks):
            raise ValueError(
                f"`prompt_layers` {peft_config.prompt_layers} out of range: the model has {len(blocks)} blocks "
                f"(indices 0..{len(blocks) - 1})."
            )
        selected = [blocks[i] for i in indices]
        if peft_config.target_modules is not None:
            selected = [name for name in selected if _matches(peft_config.target_modules, name)]
            if not selected:
                raise ValueError(
                    f"`target_modules`={peft_config.target_modules!r} matches none of the transformer blocks "
                    f"{blocks[:3]}...: only whole blocks can be prompted."
                )
        prefix = f"{self._architecture.backbone}." if self._architecture.backbone else ""
        container = blocks[0][len(prefix) :].rsplit(".", 1)[0]
        numbers = "|".join(name.rsplit(".", 1)[1] for name in selected)
        peft_config.target_modules = rf"(?:.*\.)?{re.escape(container)}\.(?:{numbers})"
        return peft_config

    def _create_and_replace(
        self,
        peft_config: VPTNSPConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        if isinstance(target, VPTNSPLayer):
            target.update_layer(adapter_name, peft_config)
            return
        layer = VPTNSPLayer(
            target, layer_index=int(current_key.rsplit(".", 1)[1]), hidden_size=vision_config(self.model).hidden_size
        )
        layer.update_layer(adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            layer.requires_grad_(False)
        self._replace_module(parent, target_name, layer, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # Whole blocks have no `.weight` for the base implementation to copy; the prompts already sit on the block's
        # device (or on "meta" under `low_cpu_mem_usage`, until the checkpoint is assigned).
        setattr(parent, child_name, new_module)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # Also the path of `PeftModel.add_adapter`/`load_adapter`, which skip the injection hooks.
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        config = self.peft_config[adapter_name]
        device = module_device(model)
        features = pooled = pooled_size(model, self._architecture)
        if self._architecture.projection is not None:
            projection = copy.deepcopy(getattr(model, self._architecture.projection)).requires_grad_(False)
            self.vpt_nsp_projection[adapter_name] = projection
            features = projection.out_features
        if config.classifier == "text":
            logit_scale = config.logit_scale
            if logit_scale is None:
                logit_scale = float(model.logit_scale) if hasattr(model, "logit_scale") else math.log(100.0)
            head = TextEmbeddingClassifier(features, logit_scale, config.temperature)
            self.vpt_nsp_head[adapter_name] = head.to(device)
        elif config.classifier == "analytic":
            self.vpt_nsp_head[adapter_name] = AnalyticClassifier(
                features,
                config.analytic_projection_size,
                config.analytic_ridge,
                config.analytic_ridge_grid,
                config.analytic_seed,
                config.head_init,
                config.temperature,
            ).to(device)
        else:
            head = ContinualClassifier(features, config.head_init, config.temperature)
            self.vpt_nsp_head[adapter_name] = head.to(device)
        if config.class_statistics:
            self.vpt_nsp_class_statistics[adapter_name] = ClassFeatureStatistics(pooled)
        # Rebuild the per-task state a checkpoint fills (`PeftModel.from_pretrained` loads after injection).
        for classes in config.task_classes:
            self._append_task(adapter_name, len(classes))
        self._set_head_trainable(adapter_name, trainable=not config.inference_mode)
        self._sync_labels()

    def _append_task(self, adapter_name: str, num_classes: int, class_embeddings: torch.Tensor | None = None) -> None:
        """Grow the head (and the class statistics) by one task."""
        self.vpt_nsp_head[adapter_name].add_task(num_classes, class_embeddings)
        if adapter_name in self.vpt_nsp_class_statistics:
            self.vpt_nsp_class_statistics[adapter_name].add_task(num_classes, module_device(self.model))

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        for name in self.vpt_nsp_head:
            self._set_head_trainable(name, trainable=name in self.active_adapters)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        for name in self.vpt_nsp_head:
            self._set_head_trainable(name, trainable=name in self.active_adapters and not inference_mode)
        self._sync_labels()

    def _set_head_trainable(self, adapter_name: str, trainable: bool) -> None:
        head = self.vpt_nsp_head[adapter_name]
        head.requires_grad_(trainable)
        head.freeze_old_heads()

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self._router.set_enabled(enabled)
        self._sync_labels()

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for name in CONTAINERS:
            container = getattr(self, name)
            if adapter_name in container:
                del container[adapter_name]
        self._sync_labels()

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError("VPT-NSP² prompts are extra tokens and cannot be merged into the weights.")

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        self._router.remove()
        backbone = backbone_module(self.model, self._architecture)
        for name in CONTAINERS:
            if name in backbone._modules:
                delattr(backbone, name)
        return super()._unload_and_optionally_merge(merge=False, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return adapter_key(cls.prefix, adapter_name).sub(r"\1", key, count=1)

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: VPTNSPConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """PEFT's structural selection (the prompted layers) plus our containers on the backbone."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        own = re.compile(rf"(^|\.){cls.prefix}(head|projection|class_statistics)\.{re.escape(adapter_name)}\.")
        selected.update({key: value for key, value in state_dict.items() if own.search(key)})
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: VPTNSPConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Our tensors under this model's names, or an error naming what does not fit (`checkpoint_keys.py`)."""
        # A `PeftModel`, or a bare transformers model after `inject_adapter_in_model` (no tuner around it).
        tuner = getattr(model, "base_model", None)
        inner = tuner.model if isinstance(tuner, cls) else model
        return remap_adapter_state_dict(model, inner, config, adapter_name, state_dict, cls.prefix)

    # ------------------------------------------------------------------ containers and vocabulary
    @property
    def vpt_nsp_head(self) -> nn.ModuleDict:
        return backbone_module(self.model, self._architecture).vpt_nsp_head

    @property
    def vpt_nsp_projection(self) -> nn.ModuleDict:
        return backbone_module(self.model, self._architecture).vpt_nsp_projection

    @property
    def vpt_nsp_class_statistics(self) -> nn.ModuleDict:
        return backbone_module(self.model, self._architecture).vpt_nsp_class_statistics

    def _active_adapter_name(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"Exactly one adapter must be active for VPT-NSP², got {active}.")
        return active[0]

    def task_heads(self, adapter_name: str | None = None) -> TaskHeads:
        """The continual classifier of ``adapter_name`` (default: the active adapter)."""
        return self.vpt_nsp_head[adapter_name or self._active_adapter_name()]

    @property
    def temperature(self) -> float:
        """The active adapter's training temperature (its logits are the heads' outputs divided by it)."""
        return self.peft_config[self._active_adapter_name()].temperature

    @property
    def num_tasks(self) -> int:
        """Number of tasks (heads) of the active adapter."""
        return self.task_heads().num_tasks

    def active_head(self) -> TaskHeads | None:
        """The active adapter's classifier, ``None`` before its first task."""
        head = self.task_heads()
        return head if head.num_tasks > 0 else None

    def prompted_layers(self, adapter_name: str | None = None) -> list[VPTNSPLayer]:
        """The blocks that hold a prompt of ``adapter_name`` (default: the active adapter), in forward order."""
        adapter_name = adapter_name or self._active_adapter_name()
        return [m for m in self.model.modules() if isinstance(m, VPTNSPLayer) and adapter_name in m.vpt_nsp_prompt]

    def prompt_lengths(self) -> dict[int, int]:
        """``{block index: M}`` of the active adapter's prompts."""
        adapter_name = self._active_adapter_name()
        return {layer.layer_index: layer.vpt_nsp_prompt[adapter_name].shape[0] for layer in self.prompted_layers()}

    def class_order(self, adapter_name: str | None = None) -> list[int]:
        """The class id of every logit column, in task order."""
        config = self.peft_config[adapter_name or self._active_adapter_name()]
        return [c for task in config.task_classes for c in task]

    def class_names_by_task(self, adapter_name: str | None = None) -> list[list[str]]:
        """The class names of every task, in task order."""
        return _names_by_task(self.peft_config[adapter_name or self._active_adapter_name()])

    def class_names(self, adapter_name: str | None = None) -> list[str]:
        """The name of every logit column (as ``config.id2label``)."""
        return list(self.peft_config[adapter_name or self._active_adapter_name()].class_names)

    def task_columns(self, task: int = -1, adapter_name: str | None = None) -> slice:
        """Logit columns of task ``task`` (default: the newest)."""
        return self.task_heads(adapter_name).task_columns(task)

    def class_ids_to_columns(self, labels: torch.Tensor) -> torch.Tensor:
        """Map class ids ``(B,)`` to logit columns; raise for classes no head covers."""
        order = torch.tensor(self.class_order(), device=labels.device)
        matches = labels.unsqueeze(-1) == order
        if not bool(matches.any(-1).all()):
            unknown = sorted(set(labels.tolist()) - set(order.tolist()))
            raise ValueError(f"Labels {unknown} belong to no task head; add them with `add_task` first.")
        return matches.int().argmax(-1)

    def _sync_labels(self) -> None:
        """``config.id2label`` names the active adapter's logit columns (the base model's labels when disabled)."""
        active = [name for name in self.active_adapters if name in self.peft_config]
        enabled = self._router.enabled and len(active) == 1
        self._router.set_class_names(self.peft_config[active[0]].class_names if enabled else [])

    def logits_from_features(self, pooled: torch.Tensor, adapter_name: str | None = None) -> torch.Tensor:
        """The image-side head: ``(B, F)`` pooled features → image projection (CLIP) → classifier.

        Returns:
            ``(B, num_seen_classes)`` logits, columns in `class_order()`.
        """
        adapter_name = adapter_name or self._active_adapter_name()
        if adapter_name in self.vpt_nsp_projection:
            projection = self.vpt_nsp_projection[adapter_name]
            pooled = projection(pooled.to(projection.weight.dtype))
        return self.vpt_nsp_head[adapter_name](pooled)

    # ------------------------------------------------------------------ tasks
    def add_task(
        self,
        classes: int | Sequence[int] | Sequence[str],
        adapter_name: str | None = None,
        *,
        class_names: Sequence[str] | None = None,
        text_names: Sequence[str] | None = None,
        tokenizer: Any = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> int:
        """Add a classifier head for a new task and return its index (0-based).

        Args:
            classes: the task's class names (they get the next unused class ids, so class id = logit column), a
                count ``n`` (the next ``n`` ids, named ``LABEL_<id>`` unless ``class_names`` is given), or explicit
                class ids.
            adapter_name: defaults to the active adapter.
            class_names: the names of ``classes`` when they are ids or a count (default ``LABEL_<id>``).
            text_names: ``classifier="text"``: what the frozen text tower encodes under every `text_templates` entry
                (default: the class names), e.g. readable names for WordNet ids.
            tokenizer: ``classifier="text"``: the text tower's tokenizer (e.g. ``AutoTokenizer.from_pretrained``).
            class_embeddings: ``classifier="text"``: precomputed ``(num_classes, E)`` class embeddings instead of
                encoding names (any model; E is the size of the image embedding the head reads).
        """
        adapter_name = adapter_name or self._active_adapter_name()
        config = self.peft_config[adapter_name]
        ids, names = _new_task_classes(classes, class_names, config)
        named = (
            class_names is not None
            or text_names is not None
            or not isinstance(classes, int)
            and all(isinstance(c, str) for c in classes)
        )
        if config.classifier == "text" and class_embeddings is None and not named:
            raise ValueError(
                "`classifier='text'` needs the task's class names (`add_task(['cat', 'dog'], tokenizer=...)` or "
                "`class_names=`), or precomputed `class_embeddings=` in `add_task`."
            )
        if config.classifier == "text":
            class_embeddings = self._task_class_embeddings(
                adapter_name, len(ids), list(text_names or names), tokenizer, class_embeddings
            )
        elif text_names is not None or tokenizer is not None or class_embeddings is not None:
            warnings.warn(
                "`text_names`, `tokenizer` and `class_embeddings` only apply to `classifier='text'`; they are ignored."
            )
            class_embeddings = None
        self._append_task(adapter_name, len(ids), class_embeddings)
        config.task_classes.append(ids)
        config.class_names.extend(names)
        self._set_head_trainable(
            adapter_name, trainable=adapter_name in self.active_adapters and not config.inference_mode
        )
        self._sync_labels()
        return len(config.task_classes) - 1

    def _task_class_embeddings(
        self,
        adapter_name: str,
        num_classes: int,
        text_names: list[str],
        tokenizer: Any,
        class_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(num_classes, E)`` embeddings of a new task's classes for the text classifier."""
        width = self.vpt_nsp_head[adapter_name].embedding_dim
        model_name = type(self.model).__name__
        if class_embeddings is None:
            if len(text_names) != num_classes:
                raise ValueError(f"Got {len(text_names)} text names for {num_classes} classes.")
            if not self._architecture.text_tower:
                raise ValueError(
                    f"`{model_name}` has no text tower to encode class names: load the image–text model "
                    f"(`CLIPModel`, `SiglipModel`), or pass precomputed `class_embeddings` of width {width}."
                )
            if tokenizer is None:
                raise ValueError(
                    "Encoding class names needs the text tower's tokenizer: `add_task(..., tokenizer="
                    "AutoTokenizer.from_pretrained(<model id>))`."
                )
            class_embeddings = encode_class_names(
                self.model,
                tokenizer,
                text_names,
                self.peft_config[adapter_name].text_templates,
                padding=self._architecture.text_padding,
            )
        class_embeddings = torch.as_tensor(class_embeddings)
        if tuple(class_embeddings.shape) != (num_classes, width):
            raise ValueError(
                f"`class_embeddings` must have shape ({num_classes}, {width}) for {num_classes} classes and the "
                f"{width}-wide image embedding of `{model_name}`, got {tuple(class_embeddings.shape)}."
            )
        return class_embeddings

    # ------------------------------------------------------------------ data passes (`NullSpaceMixin`, `ClassStatisticsMixin`)
    def _statistics_adapter(self, adapter_name: str | None, method: str) -> str:
        active = self._active_adapter_name()
        if adapter_name not in (None, active):
            raise ValueError(
                f"`{method}` collects statistics with the active adapter's prompts ({active!r}); call "
                f"`model.set_adapter({adapter_name!r})` first."
            )
        return active

    def _batch_forward(
        self, forward_fn: ForwardFn | None, forward_kwargs: Mapping[str, Any] | None
    ) -> Callable[[Any], Any]:
        """One batch through the prompted model with ``forward_fn`` (default: its pixel values)."""
        if forward_fn is not None and forward_kwargs:
            raise ValueError(
                "Pass `forward_kwargs` or `forward_fn`, not both: a `forward_fn` passes its own arguments."
            )
        forward_fn = forward_fn or forward_pixel_values(forward_kwargs)
        return lambda batch: forward_fn(self.model, batch)

    def check_finite(self, adapter_name: str | None = None) -> None:
        """Raise [`NonFiniteError`] if any tensor of the adapter (prompts, heads, null-space and class
        statistics) holds a NaN or Inf, naming them."""
        adapter_name = adapter_name or self._active_adapter_name()
        own = adapter_key(self.prefix, adapter_name)
        tensors = {
            name: tensor
            for name, tensor in self.model.state_dict().items()
            if own.search(name) and tensor.is_floating_point()
        }
        raise_if_not_finite(tensors, f"Adapter `{adapter_name}`")


def _new_task_classes(
    classes: int | Sequence[int] | Sequence[str], class_names: Sequence[str] | None, config: VPTNSPConfig
) -> tuple[list[int], list[str]]:
    """The ids and names of a new task's classes, checked against the tasks already there."""
    seen = [c for task in config.task_classes for c in task]
    next_id = max(seen) + 1 if seen else 0
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"A task needs at least one class, got {classes}.")
        classes = list(range(next_id, next_id + classes))
    classes = list(classes)
    if not classes:
        raise ValueError("A task needs at least one class, got an empty list.")
    if all(isinstance(c, str) for c in classes):
        if class_names is not None:
            raise ValueError("Pass the class names either as `classes` or as `class_names`, not both.")
        ids, names = list(range(next_id, next_id + len(classes))), [str(c) for c in classes]
    else:
        ids = [int(c) for c in classes]
        if min(ids) < 0 or len(set(ids)) != len(ids):
            raise ValueError(f"Class ids must be distinct and ≥ 0, got {ids}.")
        overlap = sorted(set(ids) & set(seen))
        if overlap:
            raise ValueError(f"Classes {overlap} already belong to an earlier task; tasks must be disjoint.")
        names = [f"LABEL_{c}" for c in ids] if class_names is None else [str(n) for n in class_names]
        if len(names) != len(ids):
            raise ValueError(f"Got {len(names)} class names for {len(ids)} classes.")
    known = {name: t for t, task in enumerate(_names_by_task(config)) for name in task}
    repeated = sorted({name for name in names if name in known or names.count(name) > 1})
    if repeated:
        where = ", ".join(f"{name!r} (task {known[name]})" if name in known else repr(name) for name in repeated)
        raise ValueError(
            f"Class names must be unique across tasks (they name the logit columns): {where} already taken. Tasks "
            "must be disjoint; rename the class if it is a different one."
        )
    return ids, names


def _names_by_task(config: VPTNSPConfig) -> list[list[str]]:
    names, start = [], 0
    for classes in config.task_classes:
        names.append(config.class_names[start : start + len(classes)])
        start += len(classes)
    return names


def _matches(target_modules: str | set[str], name: str) -> bool:
    """PEFT's rule for `target_modules`: a regex matching the whole name, or names/suffixes."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in target_modules)


def _block_names(model: nn.Module, prefix: str = "") -> list[str]:
    """Names of the image tower's transformer blocks (a prompted block counts under its own name), in forward order."""
    names = []
    for name, module in model.named_modules():
        if not name.startswith(prefix):
            continue
        if isinstance(module, VPTNSPLayer):
            names.append(name)
        elif isinstance(module, BLOCK_CLASSES) and not name.endswith(".base_layer"):
            names.append(name)
    return names
