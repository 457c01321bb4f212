# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
from .analytic_head import AnalyticClassifier
from .class_statistics import ClassFeatureStatistics
from .classifier_alignment import ClassifierAlignmentArguments, align_classifier, sample_class_features
from .config import VPTNSPConfig
from .heads import ContinualClassifier, TaskHeads
from .layer import VPTNSPLayer
from .model import VPTNSPModel
from .null_space_update import NonFiniteError, NullSpaceLayerReport
from .router import HeadRouter, VPTNSPModelOutput
from .text_classifier import TextEmbeddingClassifier, encode_class_names


__all__ = [
    "AnalyticClassifier",
    "ClassFeatureStatistics",
    "ClassifierAlignmentArguments",
    "ContinualClassifier",
    "HeadRouter",
    "NonFiniteError",
    "NullSpaceLayerReport",
    "TaskHeads",
    "TextEmbeddingClassifier",
    "VPTNSPConfig",
    "VPTNSPLayer",
    "VPTNSPModel",
    "VPTNSPModelOutput",
    "align_classifier",
    "encode_class_names",
    "sample_class_features",
]
