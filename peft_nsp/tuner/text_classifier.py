# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The text-embedding classifier of CLIP-NSP²: scaled cosine similarity to frozen class-name embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._torch_utils import eval_mode, module_device
from .heads import TaskHeads


def average_template_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """One embedding per class from its prompt templates.

    Args:
        embeddings: ``(C, P, E)`` text embeddings of every class under each of P templates.

    Returns:
        ``(C, E)``: each template embedding L2-normalised, averaged over templates, normalised again.
    """
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=1), dim=-1)


def cosine_logits(features: torch.Tensor, class_embeddings: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale) · cos(features, class_embeddings)``, computed in float32.

    Args:
        features: ``(B, E)`` image embeddings (any norm).
        class_embeddings: ``(C, E)`` unit-norm class embeddings.
        logit_scale: ``()`` log of the scale (CLIP's parametrisation).

    Returns:
        ``(B, C)`` logits.
    """
    image = F.normalize(features.float(), dim=-1)
    return logit_scale.float().exp() * image @ class_embeddings.float().T


@torch.no_grad()
def encode_class_names(
    model: nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    padding: bool | str = True,
    batch_size: int = 256,
) -> torch.Tensor:
    """Encode class names with the frozen text tower of an image–text model (`CLIPModel`, `SiglipModel`).

    Every name is put into every template (``template.format(name)``), encoded with ``model.get_text_features``,
    and the template embeddings are averaged (see [`average_template_embeddings`]). The model is put in eval
    mode for the encoding and restored afterwards.

    Args:
        model: a model with ``get_text_features(input_ids, attention_mask)``.
        tokenizer: the model's tokenizer (e.g. `CLIPTokenizer`).
        class_names: C names.
        templates: P templates with one ``{}`` each.
        padding: tokenizer padding (``"max_length"`` for SigLIP).
        batch_size: texts per forward pass.

    Returns:
        ``(C, E)`` float32 unit-norm class embeddings on the model's device.
    """
    texts = [template.format(name) for name in class_names for template in templates]
    device = module_device(model)
    chunks = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(
                texts[start : start + batch_size], padding=padding, truncation=True, return_tensors="pt"
            )
            inputs = {key: tokens[key].to(device) for key in ("input_ids", "attention_mask") if key in tokens}
            chunks.append(model.get_text_features(**inputs).pooler_output.float())
    return average_template_embeddings(torch.cat(chunks).reshape(len(class_names), len(templates), -1))


class TextEmbeddingClassifier(TaskHeads):
    """Logits = ``exp(s) · cos(image embedding, class text embedding)`` over all seen classes.

    The class embeddings (``(C_seen, E)`` buffer, unit norm) are computed once per task by the frozen text tower
    and saved with the adapter; the log logit scale ``s`` is the only trainable weight. Output columns follow the
    tasks in order, like [`ContinualClassifier`].

    Args:
        embedding_dim: E, the size of the image embedding the classifier reads.
        logit_scale: initial ``s`` (CLIP's pre-trained value is ``ln 100``).
        temperature: the logits are divided by it (the training temperature; CLIP-NSP²: 1).
    """

    def __init__(self, embedding_dim: int, logit_scale: float, temperature: float = 1.0) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.register_buffer("class_embeddings", torch.zeros(0, embedding_dim))
        self._task_sizes: list[int] = []

    def add_task(self, num_classes: int, class_embeddings: torch.Tensor | None = None) -> int:
        """Append a task's ``(num_classes, E)`` class embeddings (normalised here; zeros until a checkpoint fills
        them when ``None``). Returns the task index."""
        if class_embeddings is None:
            class_embeddings = torch.zeros(num_classes, self.embedding_dim)
        if class_embeddings.ndim != 2 or class_embeddings.shape != (num_classes, self.embedding_dim):
            raise ValueError(
                f"Class embeddings must have shape ({num_classes}, {self.embedding_dim}) for {num_classes} classes and "
                "the image embedding, "
                f"got {tuple(class_embeddings.shape)}."
            )
        new = F.normalize(class_embeddings.detach().float(), dim=-1).to(self.class_embeddings)
        self.class_embeddings = torch.cat([self.class_embeddings, new])
        self._task_sizes.append(new.shape[0])
        return len(self._task_sizes) - 1

    @property
    def task_sizes(self) -> list[int]:
        return list(self._task_sizes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` → ``(B, num_seen_classes)`` float32 logits (divided by the temperature)."""
        return cosine_logits(features, self.class_embeddings, self.logit_scale) / self.temperature
