"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .audio import dct_matrix, log_mel_spectrogram, mel_filterbank, mfcc, spectrogram
from .fusion import fill_absent

__all__ = [
    "dct_matrix",
    "fill_absent",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mfcc",
    "spectrogram",
]
