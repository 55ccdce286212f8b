"""Alignment across modalities: contrastive (retrieval), dynamic (attention, graphs) and
generative (conditional generator heads)."""

from __future__ import annotations

from ..functional.contrastive import info_nce, siglip_loss
from .attention import AttentionOutput, SpatioTemporalAttention
from .contrastive import InfoNCELoss, SigLIPLoss
from .factorized import FactorizedSpatioTemporalAttention
from .graph import ModalityGraphAttention

__all__ = [
    "AttentionOutput",
    "FactorizedSpatioTemporalAttention",
    "InfoNCELoss",
    "ModalityGraphAttention",
    "SigLIPLoss",
    "SpatioTemporalAttention",
    "info_nce",
    "siglip_loss",
]
