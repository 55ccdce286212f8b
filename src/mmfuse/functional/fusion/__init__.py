"""Fusion math behind ``mmfuse.fusion``: data-level alignment, feature-level fusion,
decision-level fusion, absent-modality filling, modality dropout, set pooling and the non-local gate."""

from __future__ import annotations

from .absent import (
    fill_absent,
)
from .data_level import (
    ALIGN_MODES,
    GRID_MODES,
    align_to_times,
    spectrogram_to_grid,
    time_order_violations,
    time_overlap,
)
from .decision import (
    DECISION_STRATEGIES,
    decision_fusion,
    hard_vote,
    max_fusion,
    product_of_experts,
    soft_vote,
    weighted_mean,
)
from .feature import (
    attention_fusion,
    bilinear_pool,
    film,
    gated_fusion,
    low_rank_tensor_fusion,
    masked_softmax,
    signed_sqrt,
    tensor_fusion,
)
from .modality_dropout import (
    modality_dropout,
)
from .sets import (
    SET_POOLS,
    nl_gate,
    set_pool,
)

__all__ = [
    "ALIGN_MODES",
    "DECISION_STRATEGIES",
    "GRID_MODES",
    "SET_POOLS",
    "align_to_times",
    "attention_fusion",
    "bilinear_pool",
    "decision_fusion",
    "fill_absent",
    "film",
    "gated_fusion",
    "hard_vote",
    "low_rank_tensor_fusion",
    "masked_softmax",
    "max_fusion",
    "modality_dropout",
    "nl_gate",
    "product_of_experts",
    "set_pool",
    "signed_sqrt",
    "soft_vote",
    "spectrogram_to_grid",
    "tensor_fusion",
    "time_order_violations",
    "time_overlap",
    "weighted_mean",
]
