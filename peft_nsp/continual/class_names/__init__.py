# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Class names and prompt templates of the paper's benchmarks, for the text-embedding classifier (CLIP-NSP²).

Shipped as package data: ``cifar100.json`` (100 names in label order), ``imagenet_r.json`` (WordNet id → name for
the 200 classes), ``domainnet.json`` (the 345 names in the official label order, plus ``paper_classes``: the 200
classes of the paper's split in its label order). Each file also holds the prompt templates of the authors' code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any


#: Benchmark datasets with a shipped list.
DATASETS = ("cifar100", "imagenet_r", "domainnet")

_WORDNET_ID = re.compile(r"n\d{8}")


@cache
def _load(dataset: str) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise ValueError(f"No class-name list for `{dataset}`; shipped: {list(DATASETS)}.")
    return json.loads(resources.files(__package__).joinpath(f"{dataset}.json").read_text(encoding="utf-8"))


def benchmark_class_names(dataset: str) -> list[str]:
    """Prompt names of ``dataset``'s classes in label order (ImageNet-R: sorted WordNet ids)."""
    classes = _load(dataset)["classes"]
    return [classes[key] for key in sorted(classes)] if isinstance(classes, dict) else list(classes)


def benchmark_text_templates(dataset: str) -> list[str]:
    """The prompt templates used for ``dataset`` by the authors' CLIP-NSP² code."""
    return list(_load(dataset)["templates"])


def domainnet_paper_classes() -> list[str]:
    """The 200 DomainNet classes of the paper's split in its label order (names as `benchmark_class_names`)."""
    return list(_load("domainnet")["paper_classes"])


def readable_class_names(label_names: Sequence[str]) -> list[str]:
    """Turn a dataset's `ClassLabel` names into prompt names.

    ImageNet-R WordNet ids (``"n01443537"``) become their names (``"goldfish"``); other names have underscores
    replaced by spaces (``"aquarium_fish"`` → ``"aquarium fish"``, ``"The_Eiffel_Tower"`` → ``"The Eiffel Tower"``).
    """
    wordnet = _load("imagenet_r")["classes"]
    return [
        wordnet[name] if _WORDNET_ID.fullmatch(name) and name in wordnet else name.replace("_", " ")
        for name in label_names
    ]
