"""Audio math behind ``AudioEncoder`` and the perception transforms: mel scales and
filterbanks, spectrograms, log-mel spectrograms and MFCCs."""

from __future__ import annotations

from .spectral import (
    dct_matrix,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    mfcc,
    power_to_db,
    spectrogram,
)

__all__ = [
    "dct_matrix",
    "hz_to_mel",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_to_hz",
    "mfcc",
    "power_to_db",
    "spectrogram",
]
