# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Pure functions computing the two null-space statistics of one self-attention layer.

Notation (ALGORITHM.md): B images, N image tokens (CLS + patches), M prompt tokens, H heads of size d,
hidden size D = H·d. For every image-token query ``q_{n,h}`` (1 × d) of head ``h``:

* condition 1 (attention logits unchanged): ``r = q_{n,h} · W_k,h`` (1 × D) and ``C1 = Σ rᵀ r`` (D × D);
* condition 2 (prompt part of the output unchanged): ``a`` = the softmax attention row of that query
  restricted to the M prompt columns and ``C2 = Σ aᵀ a`` (M × M).

Everything is accumulated in float64.
"""

from __future__ import annotations

import torch


def query_gram(queries: torch.Tensor) -> torch.Tensor:
    """Per-head Gram matrix of queries.

    Args:
        queries: ``(..., H, d)`` image-token queries (any leading dims, e.g. ``(B, N, H, d)``).

    Returns:
        ``(H, d, d)`` float64 tensor ``G_h = Σ q_hᵀ q_h`` summed over the leading dims.
    """
    q = queries.reshape(-1, queries.shape[-2], queries.shape[-1]).double()
    return torch.einsum("rhi,rhj->hij", q, q)


def key_space_covariance(gram: torch.Tensor, key_weight: torch.Tensor) -> torch.Tensor:
    """``C1 = Σ_h W_k,hᵀ G_h W_k,h`` from per-head query Grams (the cheap form of ``Σ rᵀ r``).

    Args:
        gram: ``(H, d, d)`` per-head query Gram (see [`query_gram`]).
        key_weight: ``(H·d, D)`` weight of the key projection (``nn.Linear.weight``); the key bias adds a
            constant per query and does not enter.

    Returns:
        ``(D, D)`` float64 tensor.
    """
    num_heads, head_dim, _ = gram.shape
    w = key_weight.double().reshape(num_heads, head_dim, key_weight.shape[-1])
    return torch.einsum("hai,hab,hbj->ij", w, gram.double(), w)


def prompt_attention_gram(queries: torch.Tensor, keys: torch.Tensor, num_prompts: int, scaling: float) -> torch.Tensor:
    """``C2 = Σ aᵀ a`` over image-token queries, with ``a`` the prompt columns of the softmax attention.

    Args:
        queries: ``(B, H, N, d)`` image-token queries (prompt-token queries excluded).
        keys: ``(B, H, N + M, d)`` keys of all tokens, the M prompt keys last.
        num_prompts: M.
        scaling: the attention's logit scale (``head_dim ** -0.5`` for ViT).

    Returns:
        ``(M, M)`` float64 tensor. The softmax runs over all ``N + M`` keys in float32.
    """
    logits = torch.matmul(queries.float(), keys.float().transpose(-1, -2)) * scaling
    prompt_probs = logits.softmax(dim=-1)[..., -num_prompts:].reshape(-1, num_prompts).double()
    return prompt_probs.T @ prompt_probs
