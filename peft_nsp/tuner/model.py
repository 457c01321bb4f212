# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The `vpt_nsp` tuner: prompted blocks, continual heads, null-space statistics and projection."""

from __future__ import annotations

import copy
import math
import re
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from ..losses import layernorm_consistency_loss
from ..nullspace.collector import LayerSums, StatisticsCollector
from ..nullspace.projector import null_space_projector
from ..nullspace.update import NullSpaceProjection, ProjectionTarget
from .architectures import (
    BLOCK_CLASSES,
    architecture,
    attention_access,
    pooled_features,
    pooled_size,
    vision_config,
)
from .class_statistics import ClassFeatureStatistics, class_feature_sums, mean_and_covariance
from .config import VPTNSPConfig
from .head import ContinualClassifier, TaskHeads
from .layer import VPTNSPLayer
from .text_classifier import TextEmbeddingClassifier, encode_class_names


@dataclass
class VPTNSPModelOutput(BaseModelOutputWithPooling):
    """A backbone's output plus the continual head's ``logits`` ``(B, num_seen_classes)`` and ``loss``."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


@dataclass
class NullSpaceLayerReport:
    """What one :meth:`VPTNSPModel.update_null_space` call did to one layer."""

    layer_index: int
    key_null_dim: int
    """Dimension of projector 1's null space (out of D)."""
    prompt_null_dim: int
    """Dimension of projector 2's null space (out of M)."""
    rows: float
    """Image-token query rows (``B·H·N``) collected for this task."""


class VPTNSPModel(BaseTuner):
    """VPT-NSP²: deep visual prompts for continual learning, updated in the null space of earlier tasks.

    Creates a [`VPTNSPLayer`] around every selected transformer block of the image tower of a supported model and
    a continual classifier: [`ContinualClassifier`] (one linear head per task) or, for CLIP-NSP²,
    [`TextEmbeddingClassifier`] (scaled cosine similarity to class-name embeddings of the frozen text tower).
    Paper: https://huggingface.co/papers/2406.05658.

    On `CLIPModel`/`SiglipModel` a call without `input_ids` (`model(pixel_values=...)`) runs the image tower only
    and returns the head's logits; a call with `input_ids` is the base model's image–text forward. The text tower
    is never prompted nor trained. The head reads CLIP's projected image embedding through a copy of
    `visual_projection` kept in the adapter: frozen while tasks train (only prompts and the logit scale or the
    newest linear head train, as in the paper), trained by head refinement.

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
        >>> model.add_task(10)  # classes 0..9
        >>> ...  # train task 1 with `model.attach_null_space_projection(optimizer)`
        >>> model.update_null_space(train_loader)  # statistics → projectors for the next tasks

    **Attributes**:
        - **model** ([`transformers.PreTrainedModel`]) -- the adapted model.
        - **peft_config** ([`VPTNSPConfig`]) -- the configuration.
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
        if "vpt_nsp_head" not in self._modules:
            self.vpt_nsp_head = nn.ModuleDict()
            self.vpt_nsp_projection = nn.ModuleDict()
            self.vpt_nsp_class_statistics = nn.ModuleDict()
            self._heads_enabled = True
            self._pending_labels: torch.Tensor | None = None
            self._feature_sink: list[torch.Tensor] | None = None
            # `PeftModel.forward` calls the wrapped model directly, so the heads act through its hooks.
            self._hook_handles = [
                model.register_forward_pre_hook(self._take_labels, with_kwargs=True),
                model.register_forward_hook(self._add_head_outputs, with_kwargs=True),
            ]
            if self._architecture.classifier is not None:
                classifier = getattr(model, self._architecture.classifier)
                self._hook_handles.append(classifier.register_forward_hook(self._replace_classifier_output))
            self._image_forward = _route_image_calls(model) if self._architecture.text_tower else None

    def _prepare_adapter_config(self, peft_config: VPTNSPConfig, model_config: dict) -> VPTNSPConfig:
        return peft_config

    def _prepare_model(self, peft_config: VPTNSPConfig, model: nn.Module) -> None:
        blocks = _block_names(model, self._architecture.vision_prefix)
        if not blocks:
            raise ValueError(f"No transformer blocks ({', '.join(c.__name__ for c in BLOCK_CLASSES)}) found.")
        indices = range(len(blocks)) if peft_config.prompt_layers is None else peft_config.prompt_layers
        if max(indices) >= len(blocks):
            raise ValueError(
                f"`prompt_layers` {peft_config.prompt_layers} out of range: the model has {len(blocks)} blocks "
                f"(indices 0..{len(blocks) - 1})."
            )
        targets = {blocks[i]: i for i in indices}
        if peft_config.target_modules is not None:
            targets = {name: i for name, i in targets.items() if check_target_module_exists(peft_config, name)}
            if not targets:
                raise ValueError(
                    f"`target_modules`={peft_config.target_modules!r} matches none of the transformer blocks "
                    f"{blocks[:3]}...: only whole blocks can be prompted."
                )
        self._prompt_targets = targets

    def _check_target_module_exists(self, peft_config: VPTNSPConfig, key: str) -> bool:
        return key in self._prompt_targets

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
            layer = target
        else:
            layer = VPTNSPLayer(
                target,
                layer_index=self._prompt_targets[current_key],
                hidden_size=vision_config(self.model).hidden_size,
            )
        layer.update_layer(adapter_name, peft_config.prompt_length, peft_config.prompt_init, peft_config.inference_mode)
        if layer is not target:
            if adapter_name not in self.active_adapters:
                layer.requires_grad_(False)
            self._replace_module(parent, target_name, layer, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # Whole blocks have no `.weight`; the base implementation would copy one.
        setattr(parent, child_name, new_module)
        reference = next((p for p in child.parameters() if p.device.type != "meta"), None)
        if reference is not None:
            new_module.to(reference.device)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # Also the path of `PeftModel.add_adapter`/`load_adapter`, which skip the injection hooks.
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        config = self.peft_config[adapter_name]
        device = next(model.parameters()).device
        features = pooled = pooled_size(model, self._architecture)
        if self._architecture.projection is not None:
            projection = copy.deepcopy(getattr(model, self._architecture.projection)).requires_grad_(False)
            self.vpt_nsp_projection[adapter_name] = projection
            features = projection.out_features
        if config.classifier == "text":
            logit_scale = config.logit_scale
            if logit_scale is None:
                logit_scale = float(model.logit_scale) if hasattr(model, "logit_scale") else math.log(100.0)
            self.vpt_nsp_head[adapter_name] = TextEmbeddingClassifier(features, logit_scale).to(device)
        else:
            self.vpt_nsp_head[adapter_name] = ContinualClassifier(features).to(device)
        if config.class_statistics:
            self.vpt_nsp_class_statistics[adapter_name] = ClassFeatureStatistics(pooled)
        # Rebuild the per-task state a checkpoint fills (`PeftModel.from_pretrained` loads after injection).
        for classes in config.task_classes:
            self._append_task(adapter_name, len(classes))
        self._set_head_trainable(adapter_name, trainable=not config.inference_mode)

    def _append_task(self, adapter_name: str, num_classes: int, class_embeddings: torch.Tensor | None = None) -> None:
        """Grow the head (and the class statistics) by one task; zero text embeddings until a checkpoint loads."""
        head = self.vpt_nsp_head[adapter_name]
        if isinstance(head, TextEmbeddingClassifier):
            if class_embeddings is None:
                class_embeddings = torch.zeros(num_classes, head.embedding_dim)
            head.add_task(class_embeddings)
        else:
            head.add_task(num_classes)
        if adapter_name in self.vpt_nsp_class_statistics:
            self.vpt_nsp_class_statistics[adapter_name].add_task(num_classes, next(self.model.parameters()).device)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        for name in self.vpt_nsp_head:
            self._set_head_trainable(name, trainable=name in self.active_adapters)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        for name in self.vpt_nsp_head:
            self._set_head_trainable(name, trainable=name in self.active_adapters and not inference_mode)

    def _set_head_trainable(self, adapter_name: str, trainable: bool) -> None:
        head = self.vpt_nsp_head[adapter_name]
        head.requires_grad_(trainable)
        head.freeze_old_heads()

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self._heads_enabled = enabled

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for container in (self.vpt_nsp_head, self.vpt_nsp_projection, self.vpt_nsp_class_statistics):
            if adapter_name in container:
                del container[adapter_name]

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError("VPT-NSP² prompts are extra tokens and cannot be merged into the weights.")

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        if self._image_forward is not None and self.model.__dict__.get("forward") is self._image_forward:
            del self.model.forward
        return super()._unload_and_optionally_merge(merge=False, **kwargs)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # The adapter name follows our container (`vpt_nsp_head.<name>.heads.0.weight`), not always second to last.
        return re.sub(rf"(\.{cls.prefix}\w+)\.{re.escape(adapter_name)}(?=\.|$)", r"\1", key, count=1)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: VPTNSPConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        expected = model.state_dict()
        for key, value in remapped.items():
            if key in expected and expected[key].shape != value.shape:
                raise ValueError(
                    f"The adapter does not fit this model: `{key}` has shape {tuple(value.shape)} in the checkpoint "
                    f"but {tuple(expected[key].shape)} here. VPT-NSP² adapters only load onto a base model with "
                    "the hidden size, number of layers and classifier they were trained on (check "
                    f"`base_model_name_or_path`={config.base_model_name_or_path!r})."
                )
        return remapped

    # ------------------------------------------------------------------ forward
    def _active_adapter_name(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"Exactly one adapter must be active for VPT-NSP², got {active}.")
        return active[0]

    def _active_head(self) -> TaskHeads | None:
        if not self._heads_enabled:
            return None
        head = self.vpt_nsp_head[self._active_adapter_name()]
        return head if head.num_tasks > 0 else None

    def _replace_classifier_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return None if self._active_head() is None else self._classify(args[0])

    def _classify(self, pooled: torch.Tensor) -> torch.Tensor:
        if self._feature_sink is not None:
            self._feature_sink.append(pooled.detach())
        return self.logits_from_features(pooled)

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

    def _take_labels(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """With heads, ``labels`` are global class ids for our loss: keep them from the base model's own loss."""
        self._pending_labels = None
        if self._active_head() is None or kwargs.get("labels") is None:
            return None
        self._pending_labels = kwargs.pop("labels")
        return args, kwargs

    def _add_head_outputs(self, module: nn.Module, args: tuple, kwargs: dict, outputs: Any) -> Any:
        """With task heads, return logits over all seen classes (and the cross-entropy loss for ``labels``).

        A backbone (or the image tower of `CLIPModel`/`SiglipModel`) gets a [`VPTNSPModelOutput`] (its own fields
        plus ``logits``/``loss``, the head reading the pooled feature: CLS token of the final LayerNorm for ViTs,
        ``pooler_output`` for CLIP/SigLIP); a classification model an ``ImageClassifierOutput`` whose classifier
        is the continual head. Without heads, with the adapter disabled, or for an image–text call (``input_ids``),
        outputs pass unchanged.
        """
        if not self._heads_enabled or (self._architecture.text_tower and _has_text(args, kwargs)):
            return None
        head = self._active_head()
        if isinstance(outputs, tuple):
            if head is None:
                return None
            raise ValueError("VPT-NSP² heads need `return_dict=True` (the default) in the model call.")
        hidden_states = self._drop_prompt_tokens(outputs.get("hidden_states"))
        if head is None:
            if hidden_states is not None:
                outputs["hidden_states"] = hidden_states
            return outputs
        labels, self._pending_labels = self._pending_labels, None
        if self._architecture.classifier is None:
            logits = self._classify(pooled_features(outputs, self._architecture))
        else:
            logits = outputs.logits
        loss = None if labels is None else F.cross_entropy(logits, self.class_ids_to_columns(labels))
        if self._architecture.classifier is None:
            return VPTNSPModelOutput(
                last_hidden_state=outputs.last_hidden_state,
                pooler_output=outputs.pooler_output,
                hidden_states=hidden_states,
                attentions=outputs.attentions,
                loss=loss,
                logits=logits,
            )
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=outputs.attentions)

    def _drop_prompt_tokens(self, hidden_states: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
        """The captured hidden states of a prompted block include its M prompt tokens; drop them.

        ``hidden_states[0]`` is block 0's input, ``hidden_states[i + 1]`` block ``i``'s output.
        """
        if hidden_states is None:
            return None
        prompted = {layer.layer_index: layer.vpt_nsp_prompt[self._active_adapter_name()].shape[0]
                    for layer in self._prompted_layers()}
        trimmed = []
        for position, state in enumerate(hidden_states):
            block = 0 if position == 0 else position - 1
            trimmed.append(state[:, : state.shape[1] - prompted[block]] if block in prompted else state)
        return tuple(trimmed)

    # ------------------------------------------------------------------ tasks
    def add_task(
        self,
        classes: int | Sequence[int],
        adapter_name: str | None = None,
        *,
        class_names: Sequence[str] | None = None,
        tokenizer: Any = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> int:
        """Add a classifier head for a new task and return its index (0-based).

        Args:
            classes: the task's global class ids, or a count ``n`` for the next ``n`` unused ids.
            adapter_name: defaults to the active adapter.
            class_names: ``classifier="text"``: the classes' names, encoded with the model's frozen text tower
                under every `text_templates` entry (`CLIPModel`/`SiglipModel`; needs ``tokenizer``).
            tokenizer: ``classifier="text"``: the text tower's tokenizer (e.g. ``AutoTokenizer.from_pretrained``).
            class_embeddings: ``classifier="text"``: precomputed ``(num_classes, E)`` class embeddings instead of
                names (any model; E is the size of the image embedding the head reads).
        """
        adapter_name = adapter_name or self._active_adapter_name()
        config = self.peft_config[adapter_name]
        seen = [c for task in config.task_classes for c in task]
        if isinstance(classes, int) and not isinstance(classes, bool):
            if classes < 1:
                raise ValueError(f"A task needs at least one class, got {classes}.")
            start = max(seen) + 1 if seen else 0
            classes = list(range(start, start + classes))
        classes = [int(c) for c in classes]
        if not classes:
            raise ValueError("A task needs at least one class, got an empty list.")
        if min(classes) < 0 or len(set(classes)) != len(classes):
            raise ValueError(f"Class ids must be distinct and ≥ 0, got {classes}.")
        overlap = sorted(set(classes) & set(seen))
        if overlap:
            raise ValueError(f"Classes {overlap} already belong to an earlier task; tasks must be disjoint.")
        if config.classifier == "text":
            class_embeddings = self._task_class_embeddings(
                adapter_name, classes, class_names, tokenizer, class_embeddings
            )
        elif class_names is not None or tokenizer is not None or class_embeddings is not None:
            warnings.warn(
                "`class_names`, `tokenizer` and `class_embeddings` only apply to `classifier='text'`; they are ignored."
            )
            class_embeddings = None
        config.task_classes.append(classes)
        self._append_task(adapter_name, len(classes), class_embeddings)
        self._set_head_trainable(adapter_name, trainable=adapter_name in self.active_adapters and not config.inference_mode)
        return len(config.task_classes) - 1

    def _task_class_embeddings(
        self,
        adapter_name: str,
        classes: list[int],
        class_names: Sequence[str] | None,
        tokenizer: Any,
        class_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(len(classes), E)`` embeddings of a new task's classes for the text classifier."""
        width = self.vpt_nsp_head[adapter_name].embedding_dim
        model_name = type(self.model).__name__
        if class_embeddings is None:
            if class_names is None:
                raise ValueError(
                    "`classifier='text'` needs the task's `class_names=` (with `tokenizer=`) or precomputed "
                    "`class_embeddings=` in `add_task`."
                )
            if len(class_names) != len(classes):
                raise ValueError(f"Got {len(class_names)} class names for {len(classes)} classes.")
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
            templates = self.peft_config[adapter_name].text_templates
            class_embeddings = encode_class_names(
                self.model, tokenizer, class_names, templates, padding=self._architecture.text_padding
            )
        class_embeddings = torch.as_tensor(class_embeddings)
        if tuple(class_embeddings.shape) != (len(classes), width):
            raise ValueError(
                f"`class_embeddings` must have shape ({len(classes)}, {width}) for {len(classes)} classes and the "
                f"{width}-wide image embedding of `{model_name}`, got {tuple(class_embeddings.shape)}."
            )
        return class_embeddings

    def task_columns(self, task: int = -1, adapter_name: str | None = None) -> slice:
        """Logit columns of task ``task`` (default: the newest)."""
        return self.vpt_nsp_head[adapter_name or self._active_adapter_name()].task_columns(task)

    def class_order(self, adapter_name: str | None = None) -> list[int]:
        """Global class id of every logit column, in task order."""
        config = self.peft_config[adapter_name or self._active_adapter_name()]
        return [c for task in config.task_classes for c in task]

    def class_ids_to_columns(self, labels: torch.Tensor) -> torch.Tensor:
        """Map global class ids ``(B,)`` to logit columns; raise for classes no head covers."""
        order = torch.tensor(self.class_order(), device=labels.device)
        matches = labels.unsqueeze(-1) == order
        if not bool(matches.any(-1).all()):
            unknown = sorted(set(labels.tolist()) - set(order.tolist()))
            raise ValueError(f"Labels {unknown} belong to no task head; add them with `add_task` first.")
        return matches.int().argmax(-1)

    # ------------------------------------------------------------------ null space
    def _statistics_adapter(self, adapter_name: str | None, method: str) -> str:
        active = self._active_adapter_name()
        if adapter_name not in (None, active):
            raise ValueError(
                f"`{method}` collects statistics with the active adapter's prompts ({active!r}); call "
                f"`model.set_adapter({adapter_name!r})` first."
            )
        return active

    def _prompted_layers(self, adapter_name: str | None = None) -> list[VPTNSPLayer]:
        adapter_name = adapter_name or self._active_adapter_name()
        return [m for m in self.model.modules() if isinstance(m, VPTNSPLayer) and adapter_name in m.vpt_nsp_prompt]

    @torch.no_grad()
    def update_null_space(
        self,
        batches: Iterable[Any],
        adapter_name: str | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        chunk_size: int = 16,
    ) -> list[NullSpaceLayerReport]:
        """Collect the statistics of a finished task, fold them in and rebuild the projectors.

        Run after training each task, on that task's training data with evaluation transforms. The model is
        put in eval mode for the collection and restored afterwards. Also stores the current prompts as the
        reference of the LayerNorm consistency loss.

        Args:
            batches: iterable of ``pixel_values`` tensors ``(B, C, H, W)``, of tuples/lists whose first item
                is one, or of mappings with a ``"pixel_values"`` key (a `DataLoader` works).
            adapter_name: defaults to the active adapter.
            reduce_fn: sums a tensor over processes (e.g. ``lambda t: accelerator.reduce(t, "sum")``), so
                every rank builds identical projectors from the statistics of all data.
            forward_kwargs: extra model arguments (e.g. ``{"interpolate_pos_encoding": True}``).
            chunk_size: images per chunk for the softmax attention rows.

        Returns:
            One :class:`NullSpaceLayerReport` per prompted layer.
        """
        adapter_name = self._statistics_adapter(adapter_name, "update_null_space")
        config = self.peft_config[adapter_name]
        layers = self._prompted_layers(adapter_name)
        accesses = [attention_access(layer.base_layer) for layer in layers]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with StatisticsCollector(accesses, [config.prompt_length] * len(layers), chunk_size) as collector:
                for batch in batches:
                    self.model(pixel_values=_pixel_values(batch).to(device), **(forward_kwargs or {}))
        finally:
            self.model.train(was_training)
        collected = collector.sums
        if reduce_fn is not None:
            # A process with an empty shard contributes zeros but must join every reduction.
            collected = [
                (sums or LayerSums.zeros(access, config.prompt_length, device)).reduce(reduce_fn)
                for sums, access in zip(collected, accesses)
            ]
        if any(sums is None or float(sums.rows) == 0 for sums in collected):
            raise ValueError("`update_null_space` got no batches: pass the finished task's training data.")
        # Everything is computed before any layer changes: a failure leaves the model as it was.
        updates = []
        for layer, access, sums in zip(layers, accesses, collected):
            state = layer.vpt_nsp_null_space[adapter_name]
            rows = float(sums.rows)
            key_covariance, prompt_covariance = state.accumulated(
                sums.key_covariance(access.k_proj.weight), sums.prompt_gram, rows, config.accumulation
            )
            # Eigendecompositions on the CPU in float64: identical on every rank, whatever the accelerator.
            key = null_space_projector(
                key_covariance.cpu(), config.eta1, config.threshold_mode, config.threshold_offset1,
                config.times_factor1,
            )
            prompt = null_space_projector(
                prompt_covariance.cpu(), config.eta2, config.threshold_mode, config.threshold_offset2,
                config.times_factor2,
            )
            updates.append((layer, state, key_covariance, prompt_covariance, rows, key, prompt))
        reports = []
        for layer, state, key_covariance, prompt_covariance, rows, key, prompt in updates:
            state.commit(
                key_covariance, prompt_covariance, rows, key, prompt, layer.vpt_nsp_prompt[adapter_name].detach()
            )
            reports.append(NullSpaceLayerReport(layer.layer_index, key.null_dim, prompt.null_dim, rows))
        return reports

    def projection_targets(self, adapter_name: str | None = None) -> list[ProjectionTarget]:
        """The prompts whose updates are projected now, with their projectors."""
        adapter_name = adapter_name or self._active_adapter_name()
        projected = self.peft_config[adapter_name].projected_layers
        targets = []
        for layer in self._prompted_layers(adapter_name):
            state = layer.vpt_nsp_null_space[adapter_name]
            if state.has_projectors and (projected is None or layer.layer_index in projected):
                targets.append(
                    ProjectionTarget(layer.vpt_nsp_prompt[adapter_name], state.prompt_projector, state.key_projector)
                )
        return targets

    def attach_null_space_projection(
        self, optimizer: torch.optim.Optimizer, mode: str = "update", adapter_name: str | None = None
    ) -> NullSpaceProjection:
        """Make ``optimizer`` apply ``Proj2 · u · Proj1`` to every prompt update (see `NullSpaceProjection`).

        Returns the attached hooks; call ``.remove()`` to detach.
        """
        return NullSpaceProjection(lambda: self.projection_targets(adapter_name), mode).attach(optimizer)

    def layernorm_consistency_loss(self, adapter_name: str | None = None) -> torch.Tensor:
        """The LayerNorm consistency loss (unweighted; 0 before the first task was folded in)."""
        adapter_name = adapter_name or self._active_adapter_name()
        pairs = [
            (layer.vpt_nsp_prompt[adapter_name], layer.vpt_nsp_null_space[adapter_name].previous_prompt)
            for layer in self._prompted_layers(adapter_name)
            if layer.vpt_nsp_null_space[adapter_name].has_projectors
        ]
        if not pairs:
            return next(self.vpt_nsp_head.parameters(), torch.zeros(())).new_zeros(())
        return layernorm_consistency_loss([p for p, _ in pairs], [old for _, old in pairs])

    # ------------------------------------------------------------------ head refinement
    @torch.no_grad()
    def update_class_statistics(
        self,
        batches: Iterable[Any],
        task: int = -1,
        adapter_name: str | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Store the per-class mean and covariance of the pooled features of a task's training data.

        Run after training the task, on its training data with evaluation transforms (the model is put in eval
        mode and restored). The features are those the image-side head reads (before CLIP's projection).

        Args:
            batches: iterable of mappings with ``pixel_values`` and ``labels`` (global class ids), or of
                ``(pixel_values, labels)`` tuples (a `DataLoader` over [`TaskCollator`] without ``task_classes``).
            task: the task whose classes the labels belong to (default: the newest).
            adapter_name: must be the active adapter (default).
            reduce_fn: sums a tensor over processes, so every rank stores the statistics of all data.
            forward_kwargs: extra model arguments (e.g. ``{"interpolate_pos_encoding": True}``).
        """
        adapter_name = self._statistics_adapter(adapter_name, "update_class_statistics")
        config = self.peft_config[adapter_name]
        if not config.class_statistics:
            raise ValueError("Class statistics are off for this adapter: create it with `class_statistics=True`.")
        if not config.task_classes:
            raise ValueError("The adapter has no task: call `add_task` first.")
        task = range(len(config.task_classes))[task]
        classes = config.task_classes[task]
        column = {c: i for i, c in enumerate(classes)}
        device = next(self.model.parameters()).device
        sums = None
        was_training = self.model.training
        self.model.eval()
        self._feature_sink = captured = []
        try:
            for batch in batches:
                labels = _labels(batch).tolist()
                unknown = sorted(set(labels) - set(column))
                if unknown:
                    raise ValueError(f"Labels {unknown} are not classes of task {task} ({classes}).")
                self.model(pixel_values=_pixel_values(batch).to(device), **(forward_kwargs or {}))
                local = torch.tensor([column[label] for label in labels], device=captured[-1].device)
                batch_sums = class_feature_sums(captured.pop(), local, len(classes))
                sums = batch_sums if sums is None else tuple(a + b for a, b in zip(sums, batch_sums))
        finally:
            self._feature_sink = None
            self.model.train(was_training)
        statistics = self.vpt_nsp_class_statistics[adapter_name]
        if sums is None:  # a process with an empty shard still joins the reductions
            count, width = len(classes), statistics.feature_size
            shapes = [(count,), (count, width), (count, width, width)]
            sums = tuple(torch.zeros(shape, dtype=torch.float64, device=device) for shape in shapes)
        if reduce_fn is not None:
            sums = tuple(reduce_fn(t) for t in sums)
        empty = [c for c, count in zip(classes, sums[0].tolist()) if count == 0]
        if empty:
            raise ValueError(f"`update_class_statistics` got no samples of classes {empty} of task {task}.")
        means, covariances = mean_and_covariance(*sums)
        statistics.store(task, sums[0], means, covariances)

    def class_feature_statistics(self, adapter_name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C_seen, F)`` float64 means and ``(C_seen, F, F)`` float32 covariances of every seen class, in
        logit-column order (see `update_class_statistics`)."""
        adapter_name = adapter_name or self._active_adapter_name()
        if adapter_name not in self.vpt_nsp_class_statistics:
            raise ValueError("Class statistics are off for this adapter: create it with `class_statistics=True`.")
        return self.vpt_nsp_class_statistics[adapter_name].collected()

    def refinable_parameters(self, adapter_name: str | None = None) -> list[nn.Parameter]:
        """What head refinement trains: the image projection (CLIP) and, with linear heads, every task's head."""
        adapter_name = adapter_name or self._active_adapter_name()
        parameters = []
        if adapter_name in self.vpt_nsp_projection:
            parameters += list(self.vpt_nsp_projection[adapter_name].parameters())
        head = self.vpt_nsp_head[adapter_name]
        if isinstance(head, ContinualClassifier):
            parameters += list(head.parameters())
        return parameters

    def tasks_seen(self, adapter_name: str | None = None) -> int:
        """Number of tasks folded into the null-space statistics."""
        layers = self._prompted_layers(adapter_name)
        return int(layers[0].vpt_nsp_null_space[adapter_name or self._active_adapter_name()].tasks_seen)


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


def _route_image_calls(model: nn.Module) -> Callable[..., Any]:
    """Make calls without ``input_ids`` of an image–text model run its image tower only; returns the new forward.

    `CLIPModel.forward` needs text; VPT-NSP² (heads, statistics, the trainer) calls ``model(pixel_values=...)``.
    The replacement is a method bound to the instance (so copies of the model rebind it), removed by `unload()`.
    """
    model.forward = types.MethodType(_image_or_image_text_forward, model)
    return model.forward


def _image_or_image_text_forward(
    self: nn.Module, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, *args, **kwargs
) -> Any:
    """The base model's forward with text; without, its image tower (text-only arguments are dropped)."""
    if input_ids is not None:
        return type(self).forward(self, input_ids, pixel_values, *args, **kwargs)
    for name in ("attention_mask", "position_ids", "return_loss"):
        kwargs.pop(name, None)
    return self.vision_model(pixel_values=pixel_values, **kwargs)


def _has_text(args: tuple, kwargs: Mapping[str, Any]) -> bool:
    """Whether an image–text model's call carries ``input_ids`` (its first positional argument)."""
    input_ids = args[0] if args else kwargs.get("input_ids")
    return input_ids is not None


def _labels(batch: Any) -> torch.Tensor:
    if isinstance(batch, Mapping) and "labels" in batch:
        return torch.as_tensor(batch["labels"])
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return torch.as_tensor(batch[1])
    raise ValueError(
        "Class statistics need labels: yield mappings with a `labels` key or `(pixel_values, labels)` tuples."
    )


def _pixel_values(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        if "pixel_values" not in batch:
            raise ValueError(f"A batch mapping needs a `pixel_values` key, got keys {sorted(batch)}.")
        return batch["pixel_values"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(
        f"Cannot read pixel values from a batch of type {type(batch).__name__}: yield tensors, (pixel_values, ...) "
        "tuples or mappings with a `pixel_values` key."
    )
