"""Alignment: bring modalities into agreement (contrastive, attention, generative)."""

from __future__ import annotations

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

__all__ = [
    "AugmentedCondition",
    "CVAEHead",
    "CVAELoss",
    "CVAEOutput",
    "ConditionEmbedding",
    "ConditionalDecoder",
    "ConditioningAugmentation",
    "ConsistencyScore",
    "DiffusionHead",
    "consistency_score",
]
