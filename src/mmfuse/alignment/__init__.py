"""Alignment across modalities: contrastive, generative and dynamic (attention, graphs)."""

from __future__ import annotations

from .attention import AttentionOutput, SpatioTemporalAttention
from .factorized import FactorizedSpatioTemporalAttention
from .graph import ModalityGraphAttention

__all__: list[str] = []
__all__ += ["AttentionOutput", "FactorizedSpatioTemporalAttention", "ModalityGraphAttention"]
__all__ += ["SpatioTemporalAttention"]
