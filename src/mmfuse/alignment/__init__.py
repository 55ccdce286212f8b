"""Alignment: contrastive losses (cross-modal retrieval) and dynamic (attention) alignment."""

from __future__ import annotations

from ..functional.contrastive import info_nce, siglip_loss
from .contrastive import InfoNCELoss, SigLIPLoss

__all__ = ["InfoNCELoss", "SigLIPLoss", "info_nce", "siglip_loss"]
