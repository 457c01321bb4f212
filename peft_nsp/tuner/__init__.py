# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
from .config import VPTNSPConfig
from .head import ContinualClassifier
from .layer import VPTNSPLayer
from .model import NullSpaceLayerReport, VPTNSPModel, VPTNSPModelOutput

__all__ = ["ContinualClassifier", "NullSpaceLayerReport", "VPTNSPConfig", "VPTNSPLayer", "VPTNSPModel", "VPTNSPModelOutput"]
