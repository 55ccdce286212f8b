"""Audio features in plain torch: mel filterbanks, spectrograms, log-mel and MFCC.

No librosa or torchaudio needed. Layouts follow torchaudio's conventions so users can switch:
``mel_filterbank`` returns (n_freqs, n_mels) and spectrograms are (..., F, frames).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..._checks import (
    check_choice,
    check_floating,
    check_positive,
    check_size,
    check_tensor,
    format_shape,
)
from ...errors import ShapeError

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


def hz_to_mel(freq: Tensor | float, mel_scale: str = "htk") -> Tensor:
    """Frequency in Hz to mels (``"htk"``: 2595 log10(1 + f/700); ``"slaney"``: linear below
    1 kHz, logarithmic above, as in the Auditory Toolbox)."""
    check_choice(mel_scale, ("htk", "slaney"), owner="hz_to_mel", arg="mel_scale")
    f = torch.as_tensor(freq, dtype=torch.float64)
    if mel_scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(mel: Tensor | float, mel_scale: str = "htk") -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    check_choice(mel_scale, ("htk", "slaney"), owner="mel_to_hz", arg="mel_scale")
    m = torch.as_tensor(mel, dtype=torch.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    *,
    mel_scale: str = "htk",
    norm: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Triangular mel filters on the STFT bins ``0 .. sample_rate/2``.

    Args:
        n_freqs: Number of STFT bins, ``n_fft // 2 + 1``.
        n_mels: Number of mel bands.
        sample_rate: Sampling rate in Hz.
        f_min: Lowest band edge in Hz.
        f_max: Highest band edge in Hz (defaults to Nyquist).
        mel_scale: ``"htk"`` or ``"slaney"``.
        norm: None, or ``"slaney"`` to divide each triangle by its width (constant energy).

    Returns:
        (n_freqs, n_mels) weights; ``spec.transpose(-1, -2) @ fb`` maps (..., F, S) to mels.
    """
    owner = "mel_filterbank"
    for name, value in (("n_freqs", n_freqs), ("n_mels", n_mels)):
        check_size(value, owner=owner, arg=name)
    check_positive(sample_rate, owner=owner, arg="sample_rate")
    check_choice(mel_scale, ("htk", "slaney"), owner=owner, arg="mel_scale")
    check_choice(norm, (None, "slaney"), owner=owner, arg="norm")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"{owner}: expected 0 <= f_min < f_max <= sample_rate/2={sample_rate / 2}, "
            f"got f_min={f_min}, f_max={f_max}."
        )
    all_freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(
        float(hz_to_mel(f_min, mel_scale)), float(hz_to_mel(f_max, mel_scale)), n_mels + 2,
        dtype=torch.float64,
    )
    f_pts = mel_to_hz(m_pts, mel_scale)  # (n_mels + 2,)
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1,)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)  # (n_freqs, n_mels)
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2]))[None, :]
    return fb.to(device=device, dtype=dtype or torch.get_default_dtype())


def _check_waveform(waveform: object, owner: str) -> Tensor:
    if not isinstance(waveform, Tensor):
        raise TypeError(f"{owner}: expected `waveform` to be a tensor (..., S), got {type(waveform).__name__}.")
    if not waveform.is_floating_point():
        raise TypeError(f"{owner}: expected `waveform` to be a floating-point tensor, got {waveform.dtype}.")
    if waveform.dim() < 1 or waveform.shape[-1] == 0:
        raise ShapeError(
            f"{owner}: expected `waveform` of shape (..., S) with S >= 1, got {format_shape(waveform.shape)}."
        )
    return waveform


PAD_MODES = ("reflect", "constant", "replicate", "circular")
SCALES = ("log", "db")


def spectrogram(
    waveform: Tensor,
    n_fft: int = 400,
    hop_length: int | None = None,
    win_length: int | None = None,
    *,
    power: float = 2.0,
    center: bool = True,
    pad_mode: str = "reflect",
) -> Tensor:
    """Magnitude (``power=1``) or power (``power=2``) spectrogram with a periodic Hann window.

    Args:
        center: Pad ``n_fft // 2`` samples on both sides so frame s is centred on sample
            ``s * hop``; otherwise frame s starts there.
        pad_mode: How ``center`` pads: ``"reflect"`` (the default, as torchaudio; a clip of at
            most ``n_fft // 2`` samples, too short to reflect, is zero-padded instead),
            ``"constant"`` (zeros, librosa's default), ``"replicate"`` or ``"circular"``.

    Shape:
        - waveform: (..., S)
        - output: (..., n_fft // 2 + 1, frames), frames = 1 + S // hop when ``center``, else
          1 + (S - n_fft) // hop
    """
    owner = "spectrogram"
    _check_waveform(waveform, owner)
    check_size(n_fft, owner=owner, arg="n_fft")
    check_positive(power, owner=owner, arg="power")
    check_choice(pad_mode, PAD_MODES, owner=owner, arg="pad_mode")
    for arg, value in (("hop_length", hop_length), ("win_length", win_length)):
        if value is not None:  # 0 used to fall back to the default silently
            check_size(value, owner=owner, arg=arg)
    hop = hop_length or n_fft // 4
    win = win_length or n_fft
    if win > n_fft:
        raise ValueError(f"{owner}: expected `win_length` <= n_fft={n_fft}, got {win}.")
    if not center and waveform.shape[-1] < n_fft:
        raise ShapeError(
            f"{owner}: expected `waveform` of shape (..., S) with S >= n_fft={n_fft} when "
            f"center=False, got {format_shape(waveform.shape)}."
        )
    lead = waveform.shape[:-1]
    # An empty batch: torch.stft rejects it; the result is simply empty. (Tested size by size,
    # not with Size.numel(), which would fix a symbolic batch size to its traced value.)
    if any(s == 0 for s in lead):
        frames = 1 + waveform.shape[-1] // hop if center else 1 + (waveform.shape[-1] - n_fft) // hop
        return waveform.new_zeros(*lead, n_fft // 2 + 1, max(frames, 0))
    x = waveform.reshape(-1, waveform.shape[-1])  # (N, S)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    window = torch.hann_window(win, periodic=True, dtype=work.dtype, device=work.device)
    if pad_mode == "reflect" and x.shape[-1] <= n_fft // 2:
        pad_mode = "constant"
    spec = torch.stft(work, n_fft, hop, win, window, center=center, pad_mode=pad_mode,
                      return_complex=True)  # (N, F, frames)
    mag = spec.abs()
    out = mag if power == 1.0 else mag.pow(power)
    return out.reshape(*lead, *out.shape[-2:]).to(waveform.dtype)


def _check_db_options(ref: object, amin: object, top_db: object, *, owner: str) -> None:
    check_positive(amin, owner=owner, arg="amin")
    if top_db is not None:
        check_positive(top_db, owner=owner, arg="top_db", allow_zero=True)
    if ref != "max":
        if isinstance(ref, str):
            raise ValueError(f"{owner}: expected `ref` to be a positive number or 'max', got {ref!r}.")
        check_positive(ref, owner=owner, arg="ref")


def power_to_db(
    spec: Tensor,
    *,
    ref: float | str = 1.0,
    amin: float = 1e-10,
    top_db: float | None = 80.0,
) -> Tensor:
    """Power to decibels, as ``librosa.power_to_db``: ``10 log10(max(spec, amin)) -
    10 log10(max(ref, amin))``, then floored at ``top_db`` below the peak.

    Args:
        spec: A power spectrogram (..., F, frames), non-negative.
        ref: The power of 0 dB: a number, or ``"max"`` for the peak of each spectrogram.
        amin: The smallest power read (keeps silence finite).
        top_db: Dynamic range kept below each spectrogram's peak (None: no floor). librosa's
            default is 80 as well.

    "Each spectrogram" means the last two dims: ``ref="max"`` and ``top_db`` act per item of a
    batch, as librosa does when called on one clip at a time (on a whole array librosa uses
    the array's global maximum).

    Shape:
        - spec: (..., F, frames)
        - output: like ``spec``
    """
    owner = "power_to_db"
    check_floating(spec, owner=owner, arg="spec")
    if spec.dim() < 2:
        raise ShapeError(
            f"{owner}: expected `spec` of shape (..., F, frames), got {format_shape(spec.shape)}."
        )
    _check_db_options(ref, amin, top_db, owner=owner)
    db = 10.0 * torch.log10(spec.clamp_min(amin))
    if ref == "max":
        peak = spec.amax(dim=(-2, -1), keepdim=True).clamp_min(amin)  # (..., 1, 1)
        db = db - 10.0 * torch.log10(peak)
    else:
        db = db - 10.0 * math.log10(max(float(ref), amin))  # type: ignore[arg-type]
    if top_db is not None:
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)
    return db


def log_mel_spectrogram(
    waveform: Tensor,
    sample_rate: int,
    *,
    n_fft: int = 400,
    hop_length: int | None = None,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    eps: float = 1e-10,
    mel_scale: str = "htk",
    norm: str | None = None,
    filterbank: Tensor | None = None,
    center: bool = True,
    pad_mode: str = "reflect",
    scale: str = "log",
    ref: float | str = 1.0,
    amin: float = 1e-10,
    top_db: float | None = 80.0,
) -> Tensor:
    """Log of the mel power spectrogram: the usual audio input of the encoders.

    ``scale="log"`` (the default) gives ``log(mel + eps)`` (natural log); ``scale="db"`` gives
    decibels as :func:`power_to_db` (``ref``, ``amin``, ``top_db``; those three are ignored
    with ``"log"``, ``eps`` with ``"db"``). librosa's ``power_to_db(melspectrogram(y))``
    is ``scale="db", mel_scale="slaney", norm="slaney", pad_mode="constant"``.

    Args:
        mel_scale: ``"htk"`` or ``"slaney"`` mel scale of the filterbank.
        norm: None, or ``"slaney"`` to give each mel triangle constant area (librosa's default).
        filterbank: A precomputed (n_fft//2+1, n_mels) :func:`mel_filterbank` (modules keep it
            as a buffer); built here from ``n_mels, f_min, f_max, mel_scale, norm`` when None.
        center, pad_mode: Framing, as :func:`spectrogram`.

    Shape:
        - waveform: (..., S)
        - output: (..., n_mels, frames)
    """
    owner = "log_mel_spectrogram"
    check_choice(scale, SCALES, owner=owner, arg="scale")
    if scale == "db":
        _check_db_options(ref, amin, top_db, owner=owner)
    power = spectrogram(waveform, n_fft, hop_length, power=2.0, center=center,
                        pad_mode=pad_mode)  # (..., F, frames)
    if filterbank is not None:
        check_tensor(filterbank, "F M", owner=owner, arg="filterbank", F=n_fft // 2 + 1)
    if filterbank is None:
        filterbank = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max,
                                    mel_scale=mel_scale, norm=norm, device=power.device,
                                    dtype=power.dtype)
    mel = torch.matmul(power.transpose(-1, -2), filterbank.to(power.dtype)).transpose(-1, -2)
    if scale == "db":
        return power_to_db(mel, ref=ref, amin=amin, top_db=top_db)
    return torch.log(mel + eps)  # (..., n_mels, frames)


def dct_matrix(n_out: int, n_in: int, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """Orthonormal DCT-II as an (n_in, n_out) matrix: ``x @ D`` transforms the last dim."""
    for arg, value in (("n_out", n_out), ("n_in", n_in)):
        check_size(value, owner="dct_matrix", arg=arg)
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    d = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :])  # (n_in, n_out)
    d[:, 0] *= 1.0 / math.sqrt(2.0)
    d *= math.sqrt(2.0 / n_in)
    return d.to(device=device, dtype=dtype or torch.get_default_dtype())


def mfcc(
    waveform: Tensor,
    sample_rate: int,
    *,
    n_mfcc: int = 13,
    n_mels: int = 40,
    n_fft: int = 400,
    hop_length: int | None = None,
    f_min: float = 0.0,
    f_max: float | None = None,
    eps: float = 1e-10,
    mel_scale: str = "htk",
    norm: str | None = None,
    center: bool = True,
    pad_mode: str = "reflect",
    scale: str = "log",
    ref: float | str = 1.0,
    amin: float = 1e-10,
    top_db: float | None = 80.0,
) -> Tensor:
    """Mel-frequency cepstral coefficients: orthonormal DCT-II over log-mel bands.

    The options after ``f_max`` are :func:`log_mel_spectrogram`'s. ``librosa.feature.mfcc``
    (DCT-II, ``norm="ortho"``, no liftering) is ``scale="db", mel_scale="slaney",
    norm="slaney", pad_mode="constant"``; note librosa's default ``n_mfcc`` is 20 and
    ``n_mels`` 128.

    Shape:
        - waveform: (..., S)
        - output: (..., n_mfcc, frames)
    """
    check_size(n_mfcc, owner="mfcc", arg="n_mfcc")
    if n_mfcc > n_mels:
        raise ValueError(f"mfcc: expected `n_mfcc` <= n_mels={n_mels}, got {n_mfcc}.")
    logmel = log_mel_spectrogram(waveform, sample_rate, n_fft=n_fft, hop_length=hop_length,
                                 n_mels=n_mels, f_min=f_min, f_max=f_max, eps=eps,
                                 mel_scale=mel_scale, norm=norm, center=center,
                                 pad_mode=pad_mode, scale=scale, ref=ref, amin=amin,
                                 top_db=top_db)
    d = dct_matrix(n_mfcc, n_mels, dtype=logmel.dtype, device=logmel.device)
    return torch.matmul(logmel.transpose(-1, -2), d).transpose(-1, -2)
