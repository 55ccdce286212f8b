"""Alignment across modalities: contrastive (retrieval), dynamic (attention, graphs) and
generative (conditional generator heads)."""

from __future__ import annotations

from ..functional.contrastive import info_nce, nt_xent_loss, siglip_loss, supcon_loss
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
from .supcon import SupConLoss

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
    "SupConLoss",
    "consistency_score",
    "info_nce",
    "nt_xent_loss",
    "siglip_loss",
    "supcon_loss",
]
