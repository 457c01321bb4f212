# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the benchmark scripts: run facts, tiny smoke models, greyscale transforms, JSON, tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from transformers import ViTConfig, ViTModel

from peft_nsp._io import write_atomically


RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def run_facts(device: str) -> dict[str, Any]:
    """The machine, its load (1-minute average as the results are written), the date and the command of this run,
    for the header of every table."""
    if device.startswith("cuda") and torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        cpu = platform.processor() or platform.machine()
        machine = f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return {
        "machine": machine,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def package_versions() -> dict[str, str]:
    """The versions of the packages that shape the numbers (recorded with every run)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "accelerate", "datasets")}


def tiny_vit(image_size: int = 16, patch_size: int = 4, seed: int = 0, attn_implementation: str = "eager") -> ViTModel:
    """A seeded 2-layer, hidden-32 random `ViTModel` for the seconds-long smoke runs."""
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
    )
    config._attn_implementation = attn_implementation
    return ViTModel(config, add_pooling_layer=False).eval()


def greyscale_transform(image_size: int) -> Callable[[list[Any]], torch.Tensor]:
    """Greyscale images (PIL/arrays, ``(H, W)`` uint8) → ``(B, 3, S, S)`` bilinear-resized, ImageNet-normalised.

    No augmentation: the same transform trains, evaluates and collects statistics.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def transform(images: list[Any]) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images])).float() / 255
        pixels = F.interpolate(pixels[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
        return (pixels.expand(-1, 3, -1, -1) - mean) / std

    return transform


def read_results(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """Write ``results`` as indented JSON atomically (a killed run leaves the previous file)."""
    return write_atomically(path, (json.dumps(results, indent=1, allow_nan=True) + "\n").encode())


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"m ± s"`` (sample std over seeds) of the finite values, times ``scale``; ``"n/a"`` when none."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float) * scale
    if finite.size == 0:
        return "n/a"
    if finite.size == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{finite.mean():.{digits}f} ± {finite.std(ddof=1):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def facts_line(facts: dict[str, Any]) -> str:
    load = f"; load {facts['load']}" if "load" in facts else ""
    return (
        f"Machine: {facts['machine']}{load}; date: {facts['date']}; torch {facts['torch']}.\n"
        f"Command: `{facts['command']}`"
    )
