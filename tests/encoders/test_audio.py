"""AudioEncoder: waveform and log-mel paths agree, gain invariance, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.encoders import AudioEncoder
from mmfuse.functional import log_mel_spectrogram


def _tone(batch: int = 2, n: int = 2000, sr: int = 8000) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    freqs = torch.tensor([440.0, 1200.0][:batch], dtype=torch.float64)[:, None]
    gen = torch.Generator().manual_seed(0)
    return torch.sin(2 * math.pi * freqs * t) + 0.01 * torch.randn(batch, n, generator=gen,
                                                                   dtype=torch.float64)


def _enc(**kw: object) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(16, sample_rate=8000, n_mels=20, n_fft=128, width=8, depth=2,
                        dtype=torch.float64, **kw)  # type: ignore[arg-type]


def test_waveform_equals_precomputed_log_mel() -> None:
    enc, wave = _enc(), _tone()
    spec = log_mel_spectrogram(wave, 8000, n_fft=128, hop_length=32, n_mels=20)
    torch.testing.assert_close(enc.log_mel(wave), spec)
    torch.testing.assert_close(enc(wave), enc(spec))
    tokens = enc.forward_tokens(wave)
    assert tokens.shape == (2, math.ceil(spec.shape[-1] / 2), 16)
    torch.testing.assert_close(enc(wave), tokens.mean(1))


def test_standardisation_makes_it_gain_invariant() -> None:
    enc, wave = _enc(), _tone()
    torch.testing.assert_close(enc(wave * 5.0), enc(wave), atol=1e-6, rtol=1e-6)
    raw = _enc(normalize=False)
    assert not torch.allclose(raw(wave * 5.0), raw(wave))


def test_errors() -> None:
    enc = _enc()
    with pytest.raises(ShapeError, match=r"AudioEncoder: expected `audio` of shape \(B, F, S\) with "
                                         r"F=20, got \(2, 19, 5\)"):
        enc(torch.randn(2, 19, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"expected `audio` of shape \(B, S\) \(waveform\) or"):
        enc(torch.randn(2, 1, 19, 5))
    with pytest.raises(TypeError, match=r"expected `audio` to be a floating-point tensor"):
        enc(torch.ones(2, 100, dtype=torch.long))
