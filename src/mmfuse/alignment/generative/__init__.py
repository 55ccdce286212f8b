"""Generative alignment: heads that generate one modality from a condition built from others.

The source document's encoder-decoder path (condition encoder, semantic vector, decoder) with
conditioning augmentation, a conditional VAE and a conditional diffusion model with
classifier-free guidance, plus :func:`consistency_score` to check that what is generated
agrees with its condition.
"""

from __future__ import annotations

from ...functional.generative import ConsistencyScore, consistency_score
from .augmentation import AugmentedCondition, ConditioningAugmentation
from .condition import ConditionEmbedding
from .cvae import CVAEHead, CVAELoss, CVAEOutput
from .decoder import ConditionalDecoder
from .diffusion import DiffusionHead

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
