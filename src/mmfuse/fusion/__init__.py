"""Fusion at the data, feature and decision levels, for any number of named modalities."""

from __future__ import annotations

from .attention import AttentionFusion, AttentionFusionOutput
from .bilinear import BilinearFusion
from .concat import ConcatFusion
from .cross_attention import CrossAttentionFusion, CrossAttentionFusionOutput
from .data_level import DataLevelFusion
from .decision_level import DecisionFusion
from .deep_sets import DeepSetsFusion
from .film import FiLMFusion
from .gated import GatedFusion
from .late import LateFusion
from .low_rank_tensor import LowRankTensorFusion
from .modality_dropout import ModalityDropout
from .nl_gate import NLGateFusion
from .tensor import TensorFusion

__all__ = [
    "AttentionFusion",
    "AttentionFusionOutput",
    "BilinearFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "CrossAttentionFusionOutput",
    "DataLevelFusion",
    "DecisionFusion",
    "DeepSetsFusion",
    "FiLMFusion",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "ModalityDropout",
    "NLGateFusion",
    "TensorFusion",
]
