# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Hooks that read the q/k projections of prompted layers and sum the null-space statistics.

The hooks sit on the ``q_proj``/``k_proj`` linear layers, so they see the same queries and keys whatever
attention backend (eager, SDPA, flash) the model uses. Per layer they keep only the per-head query Gram
``(H, d, d)``, the ``(M, M)`` prompt-attention Gram and a row count, and ``C1 = Σ_h W_k,hᵀ G_h W_k,h``
is formed once at the end: the ``B·H·N × D`` rows ``q·W_k,h`` are never built. The softmax rows for ``C2``
need a ``(chunk, H, N, N + M)`` temporary, bounded by ``chunk_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .statistics import key_space_covariance, prompt_attention_gram, query_gram


@dataclass(frozen=True)
class AttentionAccess:
    """What the statistics need from one self-attention module."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    num_heads: int
    head_dim: int
    scaling: float


@dataclass
class LayerSums:
    """Raw sums of one prompted layer over everything collected so far."""

    query_gram: torch.Tensor
    """``(H, d, d)`` float64 per-head Gram of image-token queries."""
    prompt_gram: torch.Tensor
    """``(M, M)`` float64 ``Σ aᵀ a``."""
    rows: torch.Tensor
    """``()`` float64 number of image-token query rows (``B·H·N``)."""

    @classmethod
    def zeros(cls, access: AttentionAccess, num_prompts: int, device: torch.device) -> LayerSums:
        """Empty sums (a process whose data shard was empty still joins the reduction)."""
        zeros = partial(torch.zeros, dtype=torch.float64, device=device)
        return cls(
            zeros(access.num_heads, access.head_dim, access.head_dim), zeros(num_prompts, num_prompts), zeros(())
        )

    def reduce(self, reduce_fn: Callable[[torch.Tensor], torch.Tensor]) -> LayerSums:
        """Combine across processes (``reduce_fn`` sums a tensor over ranks)."""
        return LayerSums(reduce_fn(self.query_gram), reduce_fn(self.prompt_gram), reduce_fn(self.rows))

    def key_covariance(self, key_weight: torch.Tensor) -> torch.Tensor:
        """``(D, D)`` ``C1`` sum for the given key weight ``(H·d, D)``."""
        return key_space_covariance(self.query_gram, key_weight.to(self.query_gram.device))


class StatisticsCollector:
    """Context manager summing ``C1``/``C2`` statistics of prompted layers during forward passes.

    Args:
        attentions: the attention access of every prompted layer.
        num_prompts: M, per layer (same order).
        chunk_size: images per chunk when forming softmax attention rows for ``C2`` (bounds the
            ``(chunk, H, N, N + M)`` temporary).

    Example:
        >>> with StatisticsCollector(accesses, prompt_lengths) as collector:
        ...     model(pixel_values)
        >>> sums = collector.sums
    """

    def __init__(self, attentions: Sequence[AttentionAccess], num_prompts: Sequence[int], chunk_size: int = 16):
        if len(attentions) != len(num_prompts):
            raise ValueError("`attentions` and `num_prompts` must have the same length.")
        self.attentions = list(attentions)
        self.num_prompts = list(num_prompts)
        self.chunk_size = chunk_size
        self.sums: list[LayerSums | None] = [None] * len(self.attentions)
        self._queries: list[torch.Tensor | None] = [None] * len(self.attentions)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> StatisticsCollector:
        for index, access in enumerate(self.attentions):
            self._handles.append(access.q_proj.register_forward_hook(self._store_queries(index)))
            self._handles.append(access.k_proj.register_forward_hook(self._accumulate(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._queries = [None] * len(self.attentions)

    def _store_queries(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._queries[index] = output.detach()

        return hook

    def _accumulate(self, index: int) -> Callable:
        access, num_prompts = self.attentions[index], self.num_prompts[index]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            queries = self._queries[index]
            self._queries[index] = None
            if queries is None:
                raise RuntimeError("k_proj ran before q_proj: this attention layout is not supported.")
            self._add(index, queries.detach(), output.detach(), access, num_prompts)

        return hook

    @torch.no_grad()
    def _add(
        self, index: int, queries: torch.Tensor, keys: torch.Tensor, access: AttentionAccess, num_prompts: int
    ) -> None:
        batch, tokens, _ = queries.shape
        image_tokens = tokens - num_prompts
        heads, head_dim = access.num_heads, access.head_dim
        # (B, N + M, H·d) -> (B, H, tokens, d); queries keep the image-token rows only.
        image_queries = queries[:, :image_tokens].reshape(batch, image_tokens, heads, head_dim).transpose(1, 2)
        all_keys = keys.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
        gram = query_gram(image_queries.transpose(1, 2))
        prompt_gram = sum(
            prompt_attention_gram(
                image_queries[start : start + self.chunk_size],
                all_keys[start : start + self.chunk_size],
                num_prompts,
                access.scaling,
            )
            for start in range(0, batch, self.chunk_size)
        )
        rows = torch.tensor(float(batch * heads * image_tokens), dtype=torch.float64, device=gram.device)
        current = self.sums[index]
        if current is None:
            self.sums[index] = LayerSums(gram, prompt_gram, rows)
        else:
            current.query_gram += gram
            current.prompt_gram += prompt_gram
            current.rows += rows
