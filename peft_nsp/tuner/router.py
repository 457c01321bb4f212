# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Route a wrapped model's calls through the continual heads.

`PeftModel.forward` calls the wrapped model directly (and transformers' `load_adapter` and `pipeline` use the wrapped
model alone), so the heads act through forward hooks on that model: [`HeadRouter`] installs them, keeps the labels
of a call away from the base model's own loss, replaces a classification model's classifier output, turns a
backbone's output into one with ``logits``, and keeps ``config.id2label`` naming the logit columns.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .architectures import Architecture, pooled_features


@dataclass
class VPTNSPModelOutput(BaseModelOutputWithPooling):
    """A backbone's output plus the continual head's ``logits`` ``(B, num_seen_classes)`` and ``loss``."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


class HeadSource(Protocol):
    """What the router needs from the tuner."""

    def active_head(self) -> nn.Module | None: ...

    def logits_from_features(self, pooled: torch.Tensor) -> torch.Tensor: ...

    def class_ids_to_columns(self, labels: torch.Tensor) -> torch.Tensor: ...

    def prompt_lengths(self) -> dict[int, int]: ...


class HeadRouter:
    """Forward hooks that make the wrapped model answer with the continual heads.

    Args:
        model: the wrapped transformers model.
        spec: its [`Architecture`].
        heads: the tuner (see [`HeadSource`]).
    """

    def __init__(self, model: nn.Module, spec: Architecture, heads: HeadSource) -> None:
        self.model = model
        self.spec = spec
        self.heads = heads
        self.enabled = True
        self.feature_sink: list[torch.Tensor] | None = None
        """While a list, every pooled feature the head reads is appended to it (class statistics)."""
        self._pending_labels: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._image_forward: Callable[..., Any] | None = None
        self._base_labels = (dict(model.config.id2label), dict(model.config.label2id))

    def install(self) -> HeadRouter:
        """Register the hooks (and, on an image–text model, route calls without text to the image tower)."""
        self._handles = [
            self.model.register_forward_pre_hook(self._take_labels, with_kwargs=True),
            self.model.register_forward_hook(self._add_head_outputs, with_kwargs=True),
        ]
        if self.spec.classifier is not None:
            classifier = getattr(self.model, self.spec.classifier)
            self._handles.append(classifier.register_forward_hook(self._replace_classifier_output))
        if self.spec.text_tower:
            self.model.forward = self._image_forward = types.MethodType(_image_or_image_text_forward, self.model)
        return self

    def remove(self) -> None:
        """Remove every hook and the routing; the base model's labels come back."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._image_forward is not None and self.model.__dict__.get("forward") is self._image_forward:
            del self.model.forward
        self._image_forward = None
        self._write_labels(*self._base_labels)

    def set_enabled(self, enabled: bool) -> None:
        """``False`` (inside ``disable_adapter()``): the base model's outputs and labels."""
        self.enabled = enabled

    def set_class_names(self, names: Sequence[str]) -> None:
        """Name the logit columns in the model config (``id2label``/``label2id``), as `pipeline` reads them."""
        if names:
            self._write_labels(dict(enumerate(names)), {name: i for i, name in enumerate(names)})
        else:
            self._write_labels(*self._base_labels)

    def _write_labels(self, id2label: Mapping[int, str], label2id: Mapping[str, int]) -> None:
        config = self.model.config
        config.id2label, config.label2id = dict(id2label), dict(label2id)

    # ------------------------------------------------------------------ hooks
    def _head(self) -> nn.Module | None:
        return self.heads.active_head() if self.enabled else None

    def _take_labels(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """With heads, ``labels`` are class ids for our loss: keep them from the base model's own loss."""
        self._pending_labels = None
        if self._head() is None or kwargs.get("labels") is None:
            return None
        self._pending_labels = kwargs.pop("labels")
        return args, kwargs

    def _replace_classifier_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return None if self._head() is None else self._classify(args[0])

    def _classify(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.feature_sink is not None:
            self.feature_sink.append(pooled.detach())
        return self.heads.logits_from_features(pooled)

    def _add_head_outputs(self, module: nn.Module, args: tuple, kwargs: dict, outputs: Any) -> Any:
        """With task heads, return logits over all seen classes (and the cross-entropy loss for ``labels``).

        A backbone (or the image tower of `CLIPModel`/`SiglipModel`) gets a [`VPTNSPModelOutput`] (its own fields
        plus ``logits``/``loss``; the head reads the final-LayerNorm CLS token of a ViT, ``pooler_output`` of
        CLIP/SigLIP); a classification model an ``ImageClassifierOutput`` whose classifier is the continual head.
        Without heads, with the adapter disabled, or for an image–text call (``input_ids``), outputs pass unchanged.
        """
        if not self.enabled or (self.spec.text_tower and _has_text(args, kwargs)):
            return None
        head = self._head()
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
        if self.spec.classifier is None:
            logits = self._classify(pooled_features(outputs, self.spec))
        else:
            logits = outputs.logits
        loss = None if labels is None else F.cross_entropy(logits, self.heads.class_ids_to_columns(labels))
        if self.spec.classifier is None:
            return VPTNSPModelOutput(
                last_hidden_state=outputs.last_hidden_state,
                pooler_output=outputs.pooler_output,
                hidden_states=hidden_states,
                attentions=outputs.attentions,
                loss=loss,
                logits=logits,
            )
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=hidden_states, attentions=outputs.attentions
        )

    def _drop_prompt_tokens(self, hidden_states: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
        """The captured hidden states of a prompted block include its M prompt tokens; drop them.

        ``hidden_states[0]`` is block 0's input, ``hidden_states[i + 1]`` block ``i``'s output.
        """
        if hidden_states is None:
            return None
        prompted = self.heads.prompt_lengths()
        trimmed = []
        for position, state in enumerate(hidden_states):
            block = 0 if position == 0 else position - 1
            trimmed.append(state[:, : state.shape[1] - prompted[block]] if block in prompted else state)
        return tuple(trimmed)


def _image_or_image_text_forward(
    self: nn.Module, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, *args, **kwargs
) -> Any:
    """The base model's forward with text; without, its image tower (text-only arguments are dropped).

    `CLIPModel.forward` needs text; VPT-NSP² (heads, statistics, the trainer) calls ``model(pixel_values=...)``.
    Bound to the instance, so copies of the model rebind it.
    """
    if input_ids is not None:
        return type(self).forward(self, input_ids, pixel_values, *args, **kwargs)
    for name in ("attention_mask", "position_ids", "return_loss"):
        kwargs.pop(name, None)
    return self.vision_model(pixel_values=pixel_values, **kwargs)


def _has_text(args: tuple, kwargs: Mapping[str, Any]) -> bool:
    """Whether an image–text model's call carries ``input_ids`` (its first positional argument)."""
    input_ids = args[0] if args else kwargs.get("input_ids")
    return input_ids is not None
