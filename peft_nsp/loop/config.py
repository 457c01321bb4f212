# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""[`ClassIncrementalConfig`]: what a class-incremental run trains, beside the trainer's [`NSPConfig`] and the
adapter's [`VPTNSPConfig`]."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ClassIncrementalConfig:
    """The settings of [`run_class_incremental`] that are neither training arguments ([`NSPConfig`], which also
    names the datasets' columns) nor adapter settings ([`VPTNSPConfig`]).

    Args:
        num_tasks (`int`):
            T, the tasks of this run (after those of `continue_from`): its classes are cut into T equal tasks.
        class_order (`list[int]`, *optional*):
            The dataset's (new) class ids in training order, all of them or the subset to train (the other classes
            are neither trained nor tested). Default: the classes shuffled with `NSPConfig.seed`.
        joint (`bool`, defaults to `False`):
            Train one task on all classes (the upper bound); the same metrics, one row.
        continue_from (`str`, *optional*):
            A finished adapter to continue with the dataset's *other* classes: a stage folder, or a repository of
            the stage store (the Hub) as ``"user/repo@task-3"``. Its tasks and accuracy rows come first; the test
            data must hold its classes too (the accuracy matrix covers every task).
        class_names (`list[str]`, *optional*):
            `classifier="text"`: the prompt name of every class id of the dataset. Default: the `ClassLabel` names
            through [`readable_class_names`] (ImageNet-R WordNet ids → names, ``_`` → space).
        run_info (`dict`, *optional*):
            JSON-serialisable facts about the run stored in every stage's record (e.g. ``{"benchmark":
            "cifar100-10", "dataset": "uoft-cs/cifar100"}``; model cards read them).
    """

    num_tasks: int
    class_order: Optional[list[int]] = None
    joint: bool = False
    continue_from: Optional[str] = None
    class_names: Optional[list[str]] = None
    run_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.num_tasks, bool) or not isinstance(self.num_tasks, int) or self.num_tasks < 1:
            raise ValueError(f"`num_tasks` must be an integer ≥ 1, got {self.num_tasks!r}.")
        if self.class_order is not None:
            order = list(self.class_order)
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in order) or len(set(order)) != len(order):
                raise ValueError(
                    f"`class_order` must list distinct new class ids of the dataset (integers), got {order}."
                )
            self.class_order = order
        if self.continue_from is not None:
            self.continue_from = os.fspath(self.continue_from)
        if self.class_names is not None:
            self.class_names = list(self.class_names)
        try:
            json.dumps(self.run_info)
        except TypeError as error:
            raise ValueError(f"`run_info` must be JSON-serialisable (it is stored in every stage): {error}.") from None
        self.run_info = dict(self.run_info)
