"""Log-mel, decibel and MFCC options against librosa, on a real recording and synthetic signals.

Tolerances: float64 waveforms agree with librosa to 1e-4 dB / 1e-4 in MFCC (measured about
4e-7); float32 waveforms to 1e-3 dB (measured about 3e-4 dB, float32 rounding of the FFT in
bins 80 dB below the peak, in both libraries) and 1e-3 in MFCC.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse import ShapeError
from mmfuse.encoders import AudioEncoder
from mmfuse.functional import log_mel_spectrogram, mel_filterbank, mfcc, power_to_db, spectrogram
from mmfuse.perception import MFCC, LogMelSpectrogram

librosa = pytest.importorskip("librosa")

# the recordings beside the repository (../shared/data/fsdd), or where MMFUSE_FSDD says
FSDD = Path(os.environ.get("MMFUSE_FSDD",
                           Path(__file__).resolve().parents[3].parent / "shared" / "data" / "fsdd"))
LIBROSA_LIKE = {"mel_scale": "slaney", "norm": "slaney", "pad_mode": "constant"}


def real_recording() -> tuple[np.ndarray, int]:
    sf = pytest.importorskip("soundfile")
    path = next((p for p in (FSDD / "recordings" / "3_jackson_7.wav", FSDD / "3_jackson_7.wav")
                 if p.exists()), FSDD / "3_jackson_7.wav")
    if not path.exists():
        pytest.skip(f"the FSDD recordings are not at {FSDD}")
    y, sr = sf.read(path, dtype="float64")
    return y, int(sr)


def synthetic(sr: int = 8000) -> np.ndarray:
    """A chirp from 100 Hz to 3 kHz over 0.4 s, a tone burst, and a little noise."""
    t = np.arange(int(0.4 * sr)) / sr
    chirp = np.sin(2 * np.pi * (100 * t + (2900 / 0.8) * t**2))
    burst = np.where((t > 0.1) & (t < 0.2), 0.5 * np.sin(2 * np.pi * 440 * t), 0.0)
    return chirp + burst + 0.01 * np.random.default_rng(0).standard_normal(t.size)


def signals() -> list[tuple[str, np.ndarray, int]]:
    """The synthetic signal, and the real recording when it is on this machine (the test
    below skips, and says so, when it is not)."""
    out = [("synthetic", synthetic(), 8000)]
    try:
        y, sr = real_recording()
    except pytest.skip.Exception:
        return out
    return [("fsdd", y, sr), *out]


def test_the_real_recording_is_compared() -> None:
    y, sr = real_recording()  # skips when FSDD is absent
    assert [name for name, _, _ in signals()] == ["fsdd", "synthetic"]
    assert sr == 8000 and y.ndim == 1 and np.abs(y).max() > 0.01


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-4), (np.float32, 1e-3)])
@pytest.mark.parametrize("db", [{}, {"ref": "max"}, {"top_db": None}, {"top_db": 40.0, "amin": 1e-5}])
def test_log_mel_db_matches_librosa(dtype, tol, db) -> None:
    for _, y, sr in signals():
        y = y.astype(dtype)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=256, hop_length=64, n_mels=40)
        kw = {"ref": np.max} if db.get("ref") == "max" else {k: v for k, v in db.items()}
        want = librosa.power_to_db(mel, **kw)
        got = log_mel_spectrogram(torch.from_numpy(y), sr, n_fft=256, hop_length=64, n_mels=40,
                                  scale="db", **LIBROSA_LIKE, **db)
        assert got.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=tol)
        # the power itself, before any log
        power = log_mel_spectrogram(torch.from_numpy(y), sr, n_fft=256, hop_length=64,
                                    n_mels=40, eps=1e-30, **LIBROSA_LIKE).exp().numpy()
        np.testing.assert_allclose(power, mel, rtol=0, atol=1e-6 * mel.max())


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-4), (np.float32, 1e-3)])
def test_mfcc_matches_librosa(dtype, tol) -> None:
    for _, y, sr in signals():
        y = y.astype(dtype)
        want = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=512, hop_length=128, n_mels=64,
                                    fmin=50.0, fmax=3500.0)
        kw = dict(n_mfcc=20, n_fft=512, hop_length=128, n_mels=64, f_min=50.0, f_max=3500.0,
                  scale="db", **LIBROSA_LIKE)
        got = mfcc(torch.from_numpy(y), sr, **kw)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=tol)
        module = MFCC(sr, **kw, dtype=torch.float64)
        np.testing.assert_allclose(module(torch.from_numpy(y)).numpy(), want, rtol=0, atol=tol)


@pytest.mark.parametrize("center, pad_mode", [(True, "reflect"), (True, "constant"),
                                              (True, "edge"), (False, "constant")])
@pytest.mark.parametrize("htk", [True, False])
def test_framing_and_mel_scales_match_librosa(center, pad_mode, htk) -> None:
    ours_pad = {"edge": "replicate"}.get(pad_mode, pad_mode)  # numpy's name vs torch's
    for _, y, sr in signals():
        want = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=256, hop_length=80, n_mels=32,
                                              center=center, pad_mode=pad_mode, htk=htk,
                                              norm=None)
        got = log_mel_spectrogram(torch.from_numpy(y), sr, n_fft=256, hop_length=80, n_mels=32,
                                  center=center, pad_mode=ours_pad, eps=1e-30,
                                  mel_scale="htk" if htk else "slaney").exp()
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-7 * want.max())
        module = LogMelSpectrogram(sr, n_fft=256, hop_length=80, n_mels=32, center=center,
                                   pad_mode=ours_pad, scale="db", top_db=None,
                                   mel_scale="htk" if htk else "slaney", dtype=torch.float64)
        np.testing.assert_allclose(module(torch.from_numpy(y)).numpy(),
                                   librosa.power_to_db(want, top_db=None), atol=1e-4)
        assert module.num_frames(len(y)) == want.shape[1]


def test_slaney_norm_flag_equals_librosa_filters() -> None:
    want = librosa.filters.mel(sr=8000, n_fft=256, n_mels=30, fmin=20.0, fmax=3800.0,
                               dtype=np.float64)  # (n_mels, n_freqs), slaney scale and norm
    got = mel_filterbank(129, 30, 8000, 20.0, 3800.0, mel_scale="slaney", norm="slaney",
                         dtype=torch.float64)
    np.testing.assert_allclose(got.T.numpy(), want, rtol=1e-10, atol=1e-14)


def test_power_to_db_matches_librosa_per_item_and_on_silence() -> None:
    g = torch.Generator().manual_seed(0)
    spec = torch.rand(3, 16, 20, generator=g, dtype=torch.float64) ** 6 * torch.tensor(
        [1.0, 1e-3, 1e4], dtype=torch.float64)[:, None, None]
    spec[1, :4] = 0.0
    got = power_to_db(spec, ref="max", top_db=50.0)
    for i in range(3):  # ref and top_db per spectrogram = librosa on one clip at a time
        want = librosa.power_to_db(spec[i].numpy(), ref=np.max, top_db=50.0)
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-10)
    silence = torch.zeros(1, 8, 5, dtype=torch.float64)
    want = librosa.power_to_db(silence[0].numpy())
    np.testing.assert_allclose(power_to_db(silence)[0].numpy(), want)  # all -100 dB
    assert torch.isfinite(power_to_db(silence, ref="max")).all()


def test_defaults_are_unchanged_natural_log_with_reflect_padding() -> None:
    y = torch.from_numpy(synthetic())
    power = spectrogram(y, 256, 64, power=2.0)
    fb = mel_filterbank(129, 40, 8000, dtype=torch.float64)
    want = torch.log((power.T @ fb).T + 1e-10)
    torch.testing.assert_close(log_mel_spectrogram(y, 8000, n_fft=256, hop_length=64, n_mels=40),
                               want)
    torch.testing.assert_close(LogMelSpectrogram(8000, n_fft=256, hop_length=64, n_mels=40,
                                                 dtype=torch.float64)(y), want)


def test_audio_encoder_uses_the_options() -> None:
    y, sr = real_recording()
    wave = torch.from_numpy(y[None, :4000]).float()
    enc = AudioEncoder(8, sample_rate=sr, n_mels=40, n_fft=256, hop_length=64, scale="db",
                       **LIBROSA_LIKE)
    mel = librosa.feature.melspectrogram(y=y[:4000].astype(np.float32), sr=sr, n_fft=256,
                                         hop_length=64, n_mels=40)
    np.testing.assert_allclose(enc.log_mel(wave)[0].numpy(), librosa.power_to_db(mel), atol=1e-3)
    assert "AudioEncoder" in repr(enc) and enc.scale == "db"


def test_frame_times_without_centering() -> None:
    m = LogMelSpectrogram(8000, n_fft=256, hop_length=64, center=False)
    out = m(torch.randn(2, 1000))
    assert out.shape == (2, 64, m.num_frames(1000)) == (2, 64, 1 + (1000 - 256) // 64)
    times = m.frame_times(1.0, out.shape[-1])
    assert times[0] == pytest.approx(1.0 + 128 / 8000)
    assert times[1] - times[0] == pytest.approx(64 / 8000)
    assert m(torch.randn(0, 1000)).shape == (0, 64, m.num_frames(1000))


def test_compiled_db_transform_equals_eager() -> None:
    m = LogMelSpectrogram(8000, n_fft=128, hop_length=32, n_mels=16, scale="db", ref="max",
                          top_db=60.0, **LIBROSA_LIKE)
    x = torch.randn(2, 800)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x))


def test_option_errors() -> None:
    x = torch.randn(300)
    with pytest.raises(ValueError, match=r"^log_mel_spectrogram: unknown `scale` 'dB'; expected "
                       r"one of \['log', 'db'\]\.$"):
        log_mel_spectrogram(x, 8000, scale="dB")
    with pytest.raises(ValueError, match=r"^spectrogram: unknown `pad_mode` 'edge'; expected one "
                       r"of \['reflect', 'constant', 'replicate', 'circular'\]\.$"):
        spectrogram(x, 64, pad_mode="edge")
    with pytest.raises(ValueError, match=r"^power_to_db: expected `ref` to be a positive number "
                       r"or 'max', got 'min'\.$"):
        power_to_db(torch.rand(4, 4), ref="min")
    with pytest.raises(ValueError, match=r"^power_to_db: expected `top_db` to be a non-negative "
                       r"number, got -1\.0\.$"):
        power_to_db(torch.rand(4, 4), top_db=-1.0)
    with pytest.raises(ValueError, match=r"^LogMelSpectrogram: expected `amin` to be a positive "
                       r"number, got 0\.$"):
        LogMelSpectrogram(8000, scale="db", amin=0)
    with pytest.raises(ValueError, match=r"^AudioEncoder: unknown `pad_mode` 'zeros'"):
        AudioEncoder(8, pad_mode="zeros")
    with pytest.raises(ShapeError, match=r"^power_to_db: expected `spec` of shape \(\.\.\., F, "
                       r"frames\), got \(4,\)\.$"):
        power_to_db(torch.rand(4))
    with pytest.raises(ShapeError, match=r"^LogMelSpectrogram: expected `waveform` of shape "
                       r"\(\.\.\., S\) with S >= n_fft=400 when center=False, got \(2, 300\)\.$"):
        LogMelSpectrogram(8000, center=False)(torch.randn(2, 300))
    with pytest.raises(ShapeError, match=r"^spectrogram: expected `waveform` of shape \(\.\.\., "
                       r"S\) with S >= n_fft=64 when center=False, got \(10,\)\.$"):
        spectrogram(torch.randn(10), 64, center=False)
    assert math.isfinite(float(log_mel_spectrogram(torch.zeros(100), 8000, scale="db").min()))
