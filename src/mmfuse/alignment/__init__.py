"""Alignment across modalities: contrastive (retrieval), dynamic (attention, graphs) and
generative (conditional generator heads)."""

from __future__ import annotations

from ..functional.contrastive import info_nce, siglip_loss
from .attention import AttentionOutput, SpatioTemporalAttention
from .contrastive import InfoNCELoss, SigLIPLoss
from .factorized import FactorizedSpatioTemporalAttention
from .generative import (
    AugmentedCondition,
    ConditionalDecoder,
    ConditionEmbedding,
    ConditioningAugmentation,
    ConsistencyScore,
    CVAEHead,
    CVAELoss,
    CVAEOutput,
    DiffusionHead,
    consistency_score,
)
from .graph import ModalityGraphAttention

__all__ = [
    "AttentionOutput",
    "AugmentedCondition",
    "CVAEHead",
    "CVAELoss",
    "CVAEOutput",
    "ConditionEmbedding",
    "ConditionalDecoder",
    "ConditioningAugmentation",
    "ConsistencyScore",
    "DiffusionHead",
    "FactorizedSpatioTemporalAttention",
    "InfoNCELoss",
    "ModalityGraphAttention",
    "SigLIPLoss",
    "SpatioTemporalAttention",
    "consistency_score",
    "info_nce",
    "siglip_loss",
]
