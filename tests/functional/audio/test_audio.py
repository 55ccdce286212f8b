"""mmfuse.functional.audio against naive references (explicit DFT, hand-built triangles)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmfuse import ShapeError
from mmfuse.functional.audio import (
    dct_matrix,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    mfcc,
    spectrogram,
)


def naive_power_spectrogram(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centre-padded (reflect) frames, periodic Hann window, explicit DFT sum."""
    pad = n_fft // 2
    xp = np.pad(x, pad, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + (len(xp) - n_fft) // hop
    n_freqs = n_fft // 2 + 1
    out = np.zeros((n_freqs, frames))
    n = np.arange(n_fft)
    for t in range(frames):
        seg = xp[t * hop : t * hop + n_fft] * window
        for k in range(n_freqs):
            c = np.sum(seg * np.exp(-2j * np.pi * k * n / n_fft))
            out[k, t] = abs(c) ** 2
    return out


def naive_filterbank(n_freqs: int, n_mels: int, sr: int) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = inv(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_freqs)
    fb = np.zeros((n_freqs, n_mels))
    for j in range(n_mels):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        for i, f in enumerate(freqs):
            if lo <= f <= mid:
                fb[i, j] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                fb[i, j] = (hi - f) / (hi - mid)
    return fb


def test_spectrogram_matches_explicit_dft() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300)
    got = spectrogram(torch.from_numpy(x), n_fft=64, hop_length=16).numpy()
    want = naive_power_spectrogram(x, 64, 16)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_filterbank_matches_hand_built_triangles() -> None:
    got = mel_filterbank(65, 10, 8000, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, naive_filterbank(65, 10, 8000), atol=1e-12)


def test_log_mel_of_a_tone_peaks_in_the_band_of_its_frequency() -> None:
    sr, f0 = 8000, 1000.0
    t = torch.arange(sr, dtype=torch.float64) / sr
    logmel = log_mel_spectrogram(torch.sin(2 * math.pi * f0 * t), sr, n_fft=256, n_mels=32)
    band = int(logmel.mean(-1).argmax())
    edges = mel_to_hz(torch.linspace(0, float(hz_to_mel(sr / 2)), 34))
    assert float(edges[band]) <= f0 <= float(edges[band + 2])


def test_log_mel_equals_log_of_filterbank_times_dft() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200)
    power = naive_power_spectrogram(x, 32, 8)
    want = np.log(naive_filterbank(17, 6, 8000).T @ power + 1e-10)
    got = log_mel_spectrogram(torch.from_numpy(x), 8000, n_fft=32, hop_length=8, n_mels=6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-8)


def test_mfcc_is_orthonormal_dct_of_log_mel() -> None:
    x = torch.randn(3, 1000, dtype=torch.float64)
    logmel = log_mel_spectrogram(x, 8000, n_mels=20).numpy()
    want = scipy.fft.dct(logmel, type=2, norm="ortho", axis=-2)[..., :7, :]
    got = mfcc(x, 8000, n_mfcc=7, n_mels=20).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_dct_matrix_is_orthonormal() -> None:
    d = dct_matrix(16, 16, dtype=torch.float64)
    torch.testing.assert_close(d.T @ d, torch.eye(16, dtype=torch.float64))


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_scale_round_trip(scale: str) -> None:
    f = torch.linspace(0, 8000, 50, dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f, scale), scale), f)


@given(batch=st.integers(1, 3), length=st.integers(50, 600))
def test_batched_equals_per_row_and_keeps_dtype(batch: int, length: int) -> None:
    x = torch.randn(batch, length)
    out = log_mel_spectrogram(x, 8000, n_fft=64, n_mels=8)
    assert out.dtype == torch.float32 and out.shape[:2] == (batch, 8)
    for i in range(batch):
        torch.testing.assert_close(out[i], log_mel_spectrogram(x[i], 8000, n_fft=64, n_mels=8))


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="spectrogram: expected `waveform` to be a floating"):
        spectrogram(torch.ones(100, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"got \(0,\)"):
        spectrogram(torch.ones(0))
    with pytest.raises(ValueError, match="unknown `mel_scale` 'bark'"):
        mel_filterbank(10, 4, 8000, mel_scale="bark")
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(10, 4, 8000, f_max=9000)


def test_argument_values_are_checked_at_the_boundary() -> None:
    from mmfuse.functional import (
        dct_matrix,
        hz_to_mel,
        log_mel_spectrogram,
        mel_to_hz,
        mfcc,
        spectrogram,
    )

    w = torch.randn(2, 1600)
    for arg in ("hop_length", "win_length"):
        with pytest.raises(ValueError, match=rf"^spectrogram: expected `{arg}` to be a positive int, got 0\.$"):
            spectrogram(w, **{arg: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^spectrogram: expected `win_length` <= n_fft=400, got 500\.$"):
        spectrogram(w, win_length=500)
    with pytest.raises(ValueError, match=r"^spectrogram: expected `power` to be a positive number, got nan\.$"):
        spectrogram(w, power=float("nan"))
    with pytest.raises(ShapeError, match=r"^log_mel_spectrogram: expected `filterbank` of shape \(F, M\) "
                       r"with F=201, got \(10, 64\)\.$"):
        log_mel_spectrogram(w, 16000, filterbank=torch.randn(10, 64))
    with pytest.raises(ValueError, match=r"^mfcc: expected `n_mfcc` to be a positive int, got 0\.$"):
        mfcc(w, 16000, n_mfcc=0)
    with pytest.raises(ValueError, match=r"^dct_matrix: expected `n_in` to be a positive int, got 0\.$"):
        dct_matrix(4, 0)
    for fn in (hz_to_mel, mel_to_hz):
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: unknown `mel_scale` 'x'"):
            fn(100.0, "x")


def test_empty_batch_gives_an_empty_result_like_the_modules() -> None:
    from mmfuse.functional import log_mel_spectrogram, mfcc, spectrogram
    from mmfuse.perception import LogMelSpectrogram

    w = torch.zeros(0, 400)
    assert spectrogram(w, 64, 16).shape == (0, *spectrogram(torch.zeros(1, 400), 64, 16).shape[1:])
    assert log_mel_spectrogram(w, 8000, n_fft=64).shape == (0, 64, 1 + 400 // 16)
    assert mfcc(w, 8000).shape[:2] == (0, 13)
    assert LogMelSpectrogram(8000, n_fft=64)(w).shape == log_mel_spectrogram(
        w, 8000, n_fft=64).shape
