"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .audio import dct_matrix, log_mel_spectrogram, mel_filterbank, mfcc, spectrogram
from .data_level import align_to_times, spectrogram_to_grid
from .decision import (
    decision_fusion,
    hard_vote,
    max_fusion,
    product_of_experts,
    soft_vote,
    weighted_mean,
)
from .fusion import fill_absent

__all__ = [
    "align_to_times",
    "dct_matrix",
    "decision_fusion",
    "fill_absent",
    "hard_vote",
    "log_mel_spectrogram",
    "max_fusion",
    "mel_filterbank",
    "mfcc",
    "product_of_experts",
    "soft_vote",
    "spectrogram",
    "spectrogram_to_grid",
    "weighted_mean",
]
