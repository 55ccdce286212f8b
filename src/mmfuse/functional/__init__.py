"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .audio import dct_matrix, log_mel_spectrogram, mel_filterbank, mfcc, spectrogram
from .contrastive import info_nce, siglip_loss
from .cross_attention import masked_cross_attention, masked_mean
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
    "attention_fusion",
    "bilinear_pool",
    "dct_matrix",
    "fill_absent",
    "film",
    "gated_fusion",
    "log_mel_spectrogram",
    "low_rank_tensor_fusion",
    "masked_cross_attention",
    "masked_mean",
    "masked_softmax",
    "mel_filterbank",
    "mfcc",
    "modality_dropout",
    "signed_sqrt",
    "spectrogram",
    "tensor_fusion",
]
__all__ = ["fill_absent", "info_nce", "siglip_loss"]
