# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Small torch helpers shared across the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore its training flag afterwards (also on error)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer); the CPU for a module without either."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


class DeviceOnlyBuffers(nn.Module):
    """A module whose buffers follow device moves but ignore dtype casts (``.half()``, ``.to(torch.bfloat16)``).

    Statistics must stay exact in their own precision: only the device of ``fn``'s result is used, so a round trip
    through a lower precision never loses digits. Meta tensors (``low_cpu_mem_usage``) stay meta until loaded.
    """

    def _apply(self, fn, recurse: bool = True):  # noqa: D401 - torch hook
        for name, buffer in self._buffers.items():
            if buffer is not None and not buffer.is_meta:
                self._buffers[name] = buffer.to(fn(buffer.reshape(-1)[:0]).device)
        return self
