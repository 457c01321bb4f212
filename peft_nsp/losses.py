# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Losses of VPT-NSP² besides the classification loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def layernorm_consistency_loss(prompts: Sequence[torch.Tensor], previous: Sequence[torch.Tensor]) -> torch.Tensor:
    """Keep each prompt token's mean and std over D where they were (condition 3, the LayerNorm).

    ``Σ_l [ mean_M |mean_D(P_l) − mean_D(P_l^old)| + mean_M |std_D(P_l) − std_D(P_l^old)| ]`` with the
    population std.

    Args:
        prompts: the current prompts, each ``(M, D)``.
        previous: the prompts at the end of the previous task, same shapes.

    Returns:
        A scalar tensor (0 when ``prompts`` is empty).
    """
    if len(prompts) != len(previous):
        raise ValueError(f"Got {len(prompts)} prompts but {len(previous)} previous prompts.")
    total = prompts[0].new_zeros(()) if prompts else torch.zeros(())
    for prompt, old in zip(prompts, previous):
        old = old.to(device=prompt.device, dtype=prompt.dtype)
        mean_gap = (prompt.mean(dim=-1) - old.mean(dim=-1)).abs().mean()
        std_gap = (prompt.std(dim=-1, correction=0) - old.std(dim=-1, correction=0)).abs().mean()
        total = total + mean_gap + std_gap
    return total
