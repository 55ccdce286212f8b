"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .attention import divided_attention, graph_attention, masked_attention, sinusoidal_encoding_3d
from .audio import (
    dct_matrix,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    mfcc,
    spectrogram,
)
from .contrastive import DEFAULT_TILE, NORM_EPS, InfoNCETerms, info_nce, info_nce_terms, siglip_loss
from .cross_attention import masked_cross_attention, masked_mean
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
from .feature_fusion import (
    attention_fusion,
    bilinear_pool,
    film,
    gated_fusion,
    low_rank_tensor_fusion,
    masked_softmax,
    signed_sqrt,
    tensor_fusion,
)
from .fusion import fill_absent
from .modality_dropout import modality_dropout

__all__ = [
    "ALIGN_MODES",
    "DECISION_STRATEGIES",
    "DEFAULT_TILE",
    "GRID_MODES",
    "NORM_EPS",
    "InfoNCETerms",
    "align_to_times",
    "attention_fusion",
    "bilinear_pool",
    "dct_matrix",
    "decision_fusion",
    "divided_attention",
    "fill_absent",
    "film",
    "gated_fusion",
    "graph_attention",
    "hard_vote",
    "hz_to_mel",
    "info_nce",
    "info_nce_terms",
    "log_mel_spectrogram",
    "low_rank_tensor_fusion",
    "masked_attention",
    "masked_cross_attention",
    "masked_mean",
    "masked_softmax",
    "max_fusion",
    "mel_filterbank",
    "mel_to_hz",
    "mfcc",
    "modality_dropout",
    "product_of_experts",
    "siglip_loss",
    "signed_sqrt",
    "sinusoidal_encoding_3d",
    "soft_vote",
    "spectrogram",
    "spectrogram_to_grid",
    "tensor_fusion",
    "time_order_violations",
    "time_overlap",
    "weighted_mean",
]
