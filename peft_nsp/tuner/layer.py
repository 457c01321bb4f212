# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A transformer block with deep visual prompts appended to its input."""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.nn import functional as F

from .._torch_utils import module_device
from ..nullspace.state import NullSpaceState
from .config import VPTNSPConfig


class VPTNSPLayer(nn.Module, BaseTunerLayer):
    """Wraps a whole transformer block: ``out = block(concat(X, P))[:, :N]``.

    The M prompt tokens ``P`` (``(M, D)`` per adapter) are appended after the N image tokens, pass through
    the block's pre-attention LayerNorm like any token, act as keys/values for the image tokens, and are
    dropped after the block, so the next block gets a fresh prompt.

    Args:
        base_layer: the transformer block (e.g. `ViTLayer`).
        layer_index: position of the block among the model's blocks.
        hidden_size: D.
    """

    adapter_layer_names = ("vpt_nsp_prompt",)
    other_param_names = ("vpt_nsp_null_space",)

    def __init__(self, base_layer: nn.Module, layer_index: int, hidden_size: int, **kwargs: Any) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.layer_index = layer_index
        self.hidden_size = hidden_size
        self.vpt_nsp_prompt = nn.ParameterDict()
        self.vpt_nsp_null_space = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, config: VPTNSPConfig) -> None:
        """Create the prompt (``(M, D)``, initialised by ``config.prompt_init``) and the null-space state of
        ``adapter_name``."""
        device = module_device(self.base_layer)
        prompt = torch.empty(config.prompt_length, self.hidden_size, device=device)
        if config.prompt_init == "uniform":
            nn.init.uniform_(prompt, -1.0, 1.0)
        else:
            nn.init.zeros_(prompt)
        self.vpt_nsp_prompt[adapter_name] = nn.Parameter(prompt)
        self.vpt_nsp_null_space[adapter_name] = NullSpaceState(self.hidden_size, config.prompt_length).to(device)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def active_prompt_adapter(self) -> str | None:
        """The active adapter with a prompt here, ``None`` if disabled or none."""
        if self.disable_adapters:
            return None
        active = [name for name in self.active_adapters if name in self.vpt_nsp_prompt]
        if len(active) > 1:
            raise ValueError(f"Prompts of several adapters ({active}) cannot be combined; activate one at a time.")
        return active[0] if active else None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``(B, N, D)`` → ``(B, N, D)``; other arguments (attention mask, kwargs) pass through."""
        adapter = self.active_prompt_adapter()
        if adapter is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        prompt = self.vpt_nsp_prompt[adapter]
        num_tokens, num_prompts = hidden_states.shape[1], prompt.shape[0]
        prompts = prompt.to(hidden_states.dtype).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        tokens = torch.cat([hidden_states, prompts], dim=1)
        if args:
            args = (_extend_attention_mask(args[0], num_prompts), *args[1:])
        elif kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = _extend_attention_mask(kwargs["attention_mask"], num_prompts)
        output = self.base_layer(tokens, *args, **kwargs)
        if isinstance(output, tuple):
            return (output[0][:, :num_tokens], *output[1:])
        return output[:, :num_tokens]

    def merge(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("VPT-NSP² prompts are extra tokens and cannot be merged into the weights.")

    def unmerge(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("VPT-NSP² prompts are extra tokens and cannot be merged into the weights.")

    def __repr__(self) -> str:
        return "vpt_nsp." + super().__repr__()


def _extend_attention_mask(mask: torch.Tensor | None, num_prompts: int) -> torch.Tensor | None:
    """Grow a ``(..., N, N)`` attention mask to ``(..., N + M, N + M)`` with the prompts visible to all."""
    if mask is None:
        return None
    visible = True if mask.dtype == torch.bool else 0.0
    return F.pad(mask, (0, num_prompts, 0, num_prompts), value=visible)
