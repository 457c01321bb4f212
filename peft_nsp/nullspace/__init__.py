# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Null-space statistics, projectors and the projected optimizer update (pure functions + thin hooks)."""

from .collector import AttentionAccess, LayerSums, StatisticsCollector
from .projector import NullSpaceProjector, adaptive_split_index, null_space_projector, times_split_index
from .state import NullSpaceState
from .statistics import key_space_covariance, prompt_attention_gram, query_gram
from .update import NullSpaceProjection, ProjectionTarget, project


__all__ = [
    "AttentionAccess",
    "LayerSums",
    "NullSpaceProjection",
    "NullSpaceProjector",
    "NullSpaceState",
    "ProjectionTarget",
    "StatisticsCollector",
    "adaptive_split_index",
    "key_space_covariance",
    "null_space_projector",
    "project",
    "prompt_attention_gram",
    "query_gram",
    "times_split_index",
]
