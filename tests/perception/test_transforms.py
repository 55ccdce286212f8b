"""Transforms checked against naive float64 references written out here (explicit DFT, loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.errors import ShapeError
from mmfuse.perception import (
    MFCC,
    LogMelSpectrogram,
    NormalizeFrames,
    Resample,
    ResizeFrames,
    resample,
)


def naive_log_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, eps: float = 1e-10) -> np.ndarray:
    """Reflect-pad, periodic Hann, explicit DFT sum, HTK triangles: (n_mels, frames)."""
    pad = n_fft // 2
    xp = np.pad(x, pad, mode="reflect")
    frames = 1 + len(x) // hop
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])
    n_freqs = n_fft // 2 + 1
    power = np.zeros((n_freqs, frames))
    for s in range(frames):
        seg = xp[s * hop: s * hop + n_fft] * window
        for k in range(n_freqs):
            re = sum(seg[n] * math.cos(2 * math.pi * k * n / n_fft) for n in range(n_fft))
            im = -sum(seg[n] * math.sin(2 * math.pi * k * n / n_fft) for n in range(n_fft))
            power[k, s] = re * re + im * im

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m: float) -> float:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = [hz(mel(0.0) + (mel(sr / 2) - mel(0.0)) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_mels, n_freqs))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_freqs):
            f = k * (sr / 2) / (n_freqs - 1)
            if lo <= f <= mid:
                fb[m, k] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                fb[m, k] = (hi - f) / (hi - mid)
    return np.log(fb @ power + eps)


def naive_dct(logmel: np.ndarray, n_mfcc: int) -> np.ndarray:
    n_mels = logmel.shape[0]
    out = np.zeros((n_mfcc, logmel.shape[1]))
    for k in range(n_mfcc):
        scale = math.sqrt(1.0 / n_mels) if k == 0 else math.sqrt(2.0 / n_mels)
        for n in range(n_mels):
            out[k] += scale * math.cos(math.pi / n_mels * (n + 0.5) * k) * logmel[n]
    return out


def naive_resample(x: np.ndarray, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """y[j] = sum_i x[i] * scale * sinc(base (j/new - i/orig)) * hann, written as a double loop."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    base = min(o, n) * rolloff
    out = np.zeros(math.ceil(len(x) * n / o))
    for j in range(len(out)):
        for i in range(len(x)):
            t = base * (j / n - i / o)
            if abs(t) > zeros:
                continue
            sinc = 1.0 if t == 0 else math.sin(math.pi * t) / (math.pi * t)
            window = math.cos(math.pi * t / zeros / 2) ** 2
            out[j] += x[i] * sinc * window * base / o
    return out


def test_log_mel_matches_naive_dft() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    m = LogMelSpectrogram(8000, n_fft=32, hop_length=8, n_mels=6, dtype=torch.float64)
    got = m(torch.from_numpy(x))
    want = naive_log_mel(x, 8000, 32, 8, 6)
    assert got.shape == (6, 26)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_mfcc_matches_naive_dct_of_naive_log_mel() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(160)
    m = MFCC(8000, n_mfcc=5, n_mels=8, n_fft=32, hop_length=16, dtype=torch.float64)
    got = m(torch.from_numpy(x))
    want = naive_dct(naive_log_mel(x, 8000, 32, 16, 8), 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_log_mel_against_torchaudio() -> None:
    torchaudio = pytest.importorskip(
        "torchaudio", reason="torchaudio not installed here; the naive DFT reference above covers the math"
    )
    x = torch.randn(2, 4000, dtype=torch.float64)
    ref = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40, power=2.0,
                                               norm=None, mel_scale="htk").double()(x)
    got = LogMelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40, dtype=torch.float64)(x)
    torch.testing.assert_close(got, torch.log(ref + 1e-10))


def test_log_mel_shapes_batching_and_frame_times() -> None:
    m = LogMelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40)
    x = torch.randn(2, 3, 16000)
    out = m(x)
    assert out.shape == (2, 3, 40, 101) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2], m(x[1, 2]))  # rows independent
    times = m.frame_times(10.0, 101)
    assert times.dtype == torch.float64
    torch.testing.assert_close(times, 10.0 + torch.arange(101, dtype=torch.float64) * 0.01)
    assert m.frame_times(torch.tensor([1.0, 2.0]), 3).shape == (2, 3)
    assert m(torch.zeros(800)).isfinite().all()  # silence stays finite
    assert "n_mels=40" in repr(m)


def test_state_dict_round_trip_and_buffers_follow_dtype() -> None:
    m = MFCC(16000, n_mfcc=13, n_mels=40)
    assert m.state_dict() == {}  # constants are non-persistent buffers
    m.load_state_dict(MFCC(16000).state_dict())
    m64 = m.to(torch.float64)
    assert m64.filterbank.dtype == torch.float64 and m64(torch.randn(800, dtype=torch.float64)).dtype == torch.float64


def test_gradcheck_log_mel() -> None:
    m = LogMelSpectrogram(8000, n_fft=16, hop_length=8, n_mels=4, dtype=torch.float64)
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize(
    "module",
    [LogMelSpectrogram(16000, n_mels=16), MFCC(16000, n_mels=16), Resample(16000, 8000)],
    ids=["logmel", "mfcc", "resample"],
)
def test_compiled_equals_eager(module: torch.nn.Module) -> None:
    x = torch.randn(2, 1600)
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x))


def test_audio_modules_on_device(device: str) -> None:
    x = torch.randn(2, 1600, device=device)
    for module in (LogMelSpectrogram(16000, n_mels=16), MFCC(16000, n_mels=16), Resample(16000, 8000)):
        out = module.to(device)(x)
        assert out.device.type == device and out.isfinite().all()


def test_bfloat16_input_is_finite() -> None:
    out = LogMelSpectrogram(16000, n_mels=16)(torch.randn(1600).bfloat16())
    assert out.dtype == torch.bfloat16 and out.float().isfinite().all()


def test_waveform_validation() -> None:
    m = LogMelSpectrogram(16000)
    with pytest.raises(TypeError, match=r"LogMelSpectrogram: expected `waveform` to be a floating-point tensor, got torch.int64"):
        m(torch.ones(100, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"expected `waveform` of shape \(..., S\) with S >= 1, got \(2, 0\)"):
        m(torch.ones(2, 0))
    with pytest.raises(TypeError, match="got list"):
        Resample(2, 1)([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`n_mfcc` <= n_mels=8"):
        MFCC(16000, n_mfcc=13, n_mels=8)
    with pytest.raises(ValueError, match="`sample_rate` to be a positive"):
        LogMelSpectrogram(0)


@pytest.mark.parametrize(("orig", "new"), [(8, 6), (6, 8), (5, 3), (4, 9)])
def test_resample_matches_naive_sinc_sum(orig: int, new: int) -> None:
    rng = np.random.default_rng(orig * 10 + new)
    x = rng.standard_normal(50)
    got = resample(torch.from_numpy(x), orig, new)
    np.testing.assert_allclose(got.numpy(), naive_resample(x, orig, new), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("orig", "new"), [(16000, 8000), (16000, 44100), (22050, 16000)])
def test_resample_keeps_a_sine_below_both_nyquists(orig: int, new: int) -> None:
    f = 440.0
    x = torch.sin(2 * math.pi * f * torch.arange(orig, dtype=torch.float64) / orig)
    y = Resample(orig, new)(x)
    assert y.shape == (new,)
    want = torch.sin(2 * math.pi * f * torch.arange(new, dtype=torch.float64) / new)
    edge = new // 50  # the ends see zero padding
    assert (y - want)[edge:-edge].abs().max() < 2e-3


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 40), st.integers(1, 3), st.sampled_from([(3, 2), (2, 3), (7, 7)]))
def test_resample_length_and_batch_independence(length: int, batch: int, rates: tuple[int, int]) -> None:
    x = torch.randn(batch, length, dtype=torch.float64)
    y = resample(x, *rates)
    assert y.shape == (batch, math.ceil(length * rates[1] / rates[0]))
    for b in range(batch):
        torch.testing.assert_close(y[b], resample(x[b], *rates))


def test_resize_frames_closed_form_on_a_ramp() -> None:
    # a horizontal ramp v(x) = x over pixel centres; halving the width samples it at 2j + 0.5
    w = 16
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 3, 4, w).clone()  # (1, 3, 4, 16)
    out = ResizeFrames((4, 8))(ramp)
    want = 2 * torch.arange(8, dtype=torch.float64) + 0.5
    torch.testing.assert_close(out[0, 0, 0, 1:-1], want[1:-1])  # interior (edges are clamped)
    assert out.dtype == torch.float64


def test_resize_frames_uint8_and_leading_dims() -> None:
    frames = torch.full((2, 5, 3, 32, 48), 77, dtype=torch.uint8)
    out = ResizeFrames((16, 24))(frames)
    assert out.shape == (2, 5, 3, 16, 24) and out.dtype == torch.uint8
    assert (out == 77).all()  # a constant image stays constant
    with pytest.raises(ShapeError, match=r"ResizeFrames: expected `frames` of shape \(..., C, H, W\), got \(32, 48\)"):
        ResizeFrames((4, 4))(torch.zeros(32, 48))


def test_normalize_frames_closed_form() -> None:
    frames = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    out = NormalizeFrames(mean=(0.0, 0.2, 0.5), std=(1.0, 0.5, 0.25))(frames)
    want = torch.tensor([0.0, (0.2 - 0.2) / 0.5, (1.0 - 0.5) / 0.25]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, want)
    with pytest.raises(ShapeError, match="with C=3, got"):
        NormalizeFrames()(torch.zeros(1, 4, 2, 2))
    with pytest.raises(TypeError, match="uint8 or floating"):
        NormalizeFrames()(torch.zeros(3, 2, 2, dtype=torch.int32))


@pytest.mark.parametrize("module", [ResizeFrames((8, 8)), NormalizeFrames()], ids=["resize", "normalize"])
def test_frame_transforms_compile(module: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(torch.compile(module, backend="eager", fullgraph=True)(x), module(x))


def test_empty_batch_gives_empty_outputs() -> None:
    x = torch.zeros(0, 800)
    assert LogMelSpectrogram(16000, hop_length=160, n_mels=8)(x).shape == (0, 8, 6)
    assert MFCC(16000, n_mfcc=4, n_mels=8, hop_length=160)(x).shape == (0, 4, 6)
    assert Resample(16000, 8000)(x).shape == (0, 400)
    assert ResizeFrames((4, 4))(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 4, 4)


def test_resample_reduces_by_the_gcd_and_refuses_huge_kernels() -> None:
    from mmfuse.perception import Resample, resample

    x = torch.randn(2, 441)
    torch.testing.assert_close(resample(x, 44100, 16000), resample(x, 441, 160))
    with pytest.raises(ValueError, match=r"^Resample: resampling 7919 -> 104729 Hz reduces to the "
                       r"ratio 104729/7919, whose sinc kernel needs \d+ taps \(at most 4194304\)"):
        Resample(7919, 104729)
    with pytest.raises(TypeError, match=r"^Resample: expected `orig_freq` to be a positive int, "
                       r"got 16000\.5\.$"):
        Resample(16000.5, 8000)  # type: ignore[arg-type]
    assert Resample(48000, 44100)(torch.randn(1, 480)).shape == (1, 441)
