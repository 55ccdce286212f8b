"""Transforms from loader output to model input, in plain torch: audio features and frames.

The audio math is :mod:`mmfuse.functional.audio`; these modules keep its constant matrices
(mel filterbank, DCT) as non-persistent buffers so they follow ``.to(device)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_inputs,
    check_positive,
    check_size,
    format_shape,
    owner_name,
)
from .._precision import outside_autocast
from ..errors import ShapeError
from ..functional import dct_matrix, log_mel_spectrogram, mel_filterbank
from ..functional.audio.spectral import PAD_MODES, SCALES, _check_db_options

__all__ = [
    "MFCC",
    "LogMelSpectrogram",
    "NormalizeFrames",
    "Resample",
    "ResizeFrames",
    "resample",
]


class LogMelSpectrogram(nn.Module):
    """Log mel power spectrogram of a waveform (periodic Hann window): ``log(mel + eps)`` by
    default, or decibels (``scale="db"``, as ``librosa.power_to_db``).

    Args:
        sample_rate: Sampling rate in Hz.
        n_fft: FFT size (and window length).
        hop_length: Samples between frames; defaults to ``n_fft // 4``.
        n_mels: Mel bands.
        f_min: Lower band edge in Hz.
        f_max: Upper band edge in Hz (defaults to Nyquist).
        eps: Added before the natural log (``scale="log"``) so silence stays finite.
        mel_scale: ``"htk"`` or ``"slaney"``.
        norm: None, or ``"slaney"``: mel triangles of constant area (librosa's default).
        center: Centre frame s on sample ``s * hop_length`` (pad ``n_fft // 2`` both sides).
        pad_mode: Padding of ``center``: ``"reflect"`` (default), ``"constant"`` (librosa's
            default), ``"replicate"`` or ``"circular"``.
        scale: ``"log"`` (natural log, default) or ``"db"``.
        ref: 0 dB power for ``scale="db"``: a number or ``"max"`` (each spectrogram's peak).
        amin: Smallest power read for ``scale="db"``.
        top_db: Dynamic range kept below each spectrogram's peak for ``scale="db"`` (None: all).
        device: Device of the filterbank buffer.
        dtype: Dtype of the filterbank buffer.

    ``LogMelSpectrogram(sr, scale="db", mel_scale="slaney", norm="slaney",
    pad_mode="constant")`` computes ``librosa.power_to_db(librosa.feature.melspectrogram(y,
    sr=sr))`` (with the same ``n_fft``, ``hop_length``, ``n_mels``); ``ref="max"`` and
    ``top_db`` act per spectrogram of a batch.

    Shape:
        - waveform: (..., S) floating
        - output: (..., n_mels, frames), frames = 1 + S // hop_length; frame s is centred on
          sample ``s * hop_length`` (see :meth:`frame_times`). With ``center=False``:
          frames = 1 + (S - n_fft) // hop_length, frame s centred on ``s * hop_length + n_fft / 2``.

    Example:
        >>> m = LogMelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40)
        >>> m(torch.randn(2, 16000)).shape
        torch.Size([2, 40, 101])
    """

    filterbank: Tensor

    def __init__(
        self,
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
        center: bool = True,
        pad_mode: str = "reflect",
        scale: str = "log",
        ref: float | str = 1.0,
        amin: float = 1e-10,
        top_db: float | None = 80.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("sample_rate", sample_rate), ("eps", eps)):
            check_positive(value, owner=self, arg=name)
        for name, value in (("n_fft", n_fft), ("n_mels", n_mels)):
            check_size(value, owner=self, arg=name)
        if hop_length is not None:
            check_size(hop_length, owner=self, arg="hop_length")
        check_choice(pad_mode, PAD_MODES, owner=self, arg="pad_mode")
        check_choice(scale, SCALES, owner=self, arg="scale")
        _check_db_options(ref, amin, top_db, owner=owner_name(self))
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length or n_fft // 4)
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = f_max
        self.eps = float(eps)
        self.mel_scale, self.norm = mel_scale, norm
        self.center, self.pad_mode = bool(center), pad_mode
        self.scale, self.ref, self.amin, self.top_db = scale, ref, float(amin), top_db
        fb = mel_filterbank(self.n_fft // 2 + 1, self.n_mels, self.sample_rate, self.f_min, f_max,
                            mel_scale=mel_scale, norm=norm, device=device, dtype=dtype)
        self.register_buffer("filterbank", fb, persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        _check_waveform(waveform, self)
        check_inputs(self, {"waveform": waveform}, dtype=False)  # filterbank cast to its dtype
        if not self.center and waveform.shape[-1] < self.n_fft:
            raise ShapeError(
                f"{owner_name(self)}: expected `waveform` of shape (..., S) with "
                f"S >= n_fft={self.n_fft} when center=False, got {format_shape(waveform.shape)}."
            )
        if any(s == 0 for s in waveform.shape[:-1]):  # an empty batch: torch.stft rejects it
            return waveform.new_zeros(*waveform.shape[:-1], self.n_mels,
                                      self.num_frames(waveform.shape[-1]))
        with outside_autocast(waveform.device):  # signal processing: in the input's dtype
            return log_mel_spectrogram(waveform, self.sample_rate, n_fft=self.n_fft,
                                       hop_length=self.hop_length, eps=self.eps,
                                       filterbank=self.filterbank, center=self.center,
                                       pad_mode=self.pad_mode, scale=self.scale, ref=self.ref,
                                       amin=self.amin, top_db=self.top_db)

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples."""
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.n_fft) // self.hop_length

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def frame_times(self, start: float | Tensor, num_frames: int) -> Tensor:
        """Clock time of each frame's centre for a waveform whose first sample is at ``start``.

        Shape: ``start`` a float or (B,) tensor; output (num_frames,) or (B, num_frames), float64.
        """
        steps = torch.arange(num_frames, dtype=torch.float64) * (self.hop_length / self.sample_rate)
        if not self.center:
            steps = steps + self.n_fft / 2 / self.sample_rate
        s = torch.as_tensor(start, dtype=torch.float64)
        return s.unsqueeze(-1) + steps if s.dim() else s + steps

    def extra_repr(self) -> str:
        extra = "" if self.scale == "log" else f", scale={self.scale!r}, top_db={self.top_db}"
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
                f"hop_length={self.hop_length}, n_mels={self.n_mels}{extra}")


class MFCC(LogMelSpectrogram):
    """Mel-frequency cepstral coefficients: orthonormal DCT-II of the log-mel bands.

    Args:
        sample_rate: Sampling rate in Hz.
        n_mfcc: Coefficients kept (at most ``n_mels``).
        n_mels: Mel bands.
        n_fft: FFT size (and window length).
        hop_length: Samples between frames; defaults to ``n_fft // 4``.
        f_min: Lower band edge in Hz.
        f_max: Upper band edge in Hz (defaults to Nyquist).
        eps: Added before the natural log so silence stays finite.
        mel_scale: ``"htk"`` or ``"slaney"``.
        norm, center, pad_mode, scale, ref, amin, top_db: As :class:`LogMelSpectrogram`.
            ``librosa.feature.mfcc`` is ``scale="db", mel_scale="slaney", norm="slaney",
            pad_mode="constant"`` (librosa's defaults: ``n_mfcc=20``, ``n_mels=128``).
        device: Device of the filterbank and DCT buffers.
        dtype: Dtype of the filterbank and DCT buffers.

    Shape:
        - waveform: (..., S) floating
        - output: (..., n_mfcc, frames)

    Example:
        >>> MFCC(16000, n_mfcc=13, n_mels=40, hop_length=160)(torch.randn(16000)).shape
        torch.Size([13, 101])
    """

    dct: Tensor

    def __init__(
        self,
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                         f_min=f_min, f_max=f_max, eps=eps, mel_scale=mel_scale, norm=norm,
                         center=center, pad_mode=pad_mode, scale=scale, ref=ref, amin=amin,
                         top_db=top_db, device=device, dtype=dtype)
        check_size(n_mfcc, owner=self, arg="n_mfcc")
        if n_mfcc > n_mels:
            raise ValueError(f"MFCC: expected `n_mfcc` <= n_mels={n_mels}, got {n_mfcc}.")
        self.n_mfcc = int(n_mfcc)
        self.register_buffer("dct", dct_matrix(n_mfcc, n_mels, device=device, dtype=dtype),
                             persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        logmel = super().forward(waveform)  # (..., n_mels, frames)
        with outside_autocast(waveform.device):  # signal processing: in the input's dtype
            out = torch.matmul(logmel.transpose(-1, -2), self.dct.to(logmel.dtype))  # (..., frames, n_mfcc)
        return out.transpose(-1, -2)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"n_mfcc={self.n_mfcc}, " + super().extra_repr()


def _sinc_kernel(orig: int, new: int, width_zeros: int, rolloff: float,
                 dtype: torch.dtype, device: torch.device | None) -> tuple[Tensor, int]:
    """Hann-windowed sinc kernels, one per output phase: (new, 1, 2 * width + orig)."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (L,)
    t = (-torch.arange(new, dtype=torch.float64) / new)[:, None] + idx[None, :]  # (new, L)
    t = (t * base).clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernel = sinc * window * (base / orig)
    return kernel[:, None, :].to(dtype=dtype, device=device), width


def resample(waveform: Tensor, orig_freq: int, new_freq: int, *,
             lowpass_filter_width: int = 6, rolloff: float = 0.99) -> Tensor:
    """Band-limited resampling with a Hann-windowed sinc (the polyphase method torchaudio uses).

    Shape:
        - waveform: (..., S) floating
        - output: (..., ceil(S * new_freq / orig_freq))
    """
    _check_resample_config(orig_freq, new_freq, lowpass_filter_width, rolloff, "resample")
    _check_waveform(waveform, "resample")
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff, waveform.dtype,
                                 waveform.device)
    lead, length = waveform.shape[:-1], waveform.shape[-1]
    target = math.ceil(new * length / orig)
    if any(s == 0 for s in lead):  # an empty batch: conv1d rejects it
        return waveform.new_zeros(*lead, target)
    x = waveform.reshape(-1, 1, length)  # (N, 1, S)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernel, stride=orig)  # (N, new, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # (N, frames * new), phases interleaved
    return y[:, :target].reshape(*lead, target)


class Resample(nn.Module):
    """Resample audio from ``orig_freq`` to ``new_freq`` Hz (see :func:`resample`).

    Args:
        orig_freq: Input sampling rate in Hz (an integer).
        new_freq: Output sampling rate in Hz (an integer).
        lowpass_filter_width: Zero crossings of the sinc on each side (sharper, slower when larger).
        rolloff: Cutoff as a fraction of the lower Nyquist frequency.

    Shape:
        - waveform: (..., S) floating
        - output: (..., ceil(S * new_freq / orig_freq))

    Example:
        >>> Resample(16000, 8000)(torch.randn(2, 1600)).shape
        torch.Size([2, 800])
    """

    def __init__(self, orig_freq: int, new_freq: int, *, lowpass_filter_width: int = 6,
                 rolloff: float = 0.99) -> None:
        super().__init__()
        _check_resample_config(orig_freq, new_freq, lowpass_filter_width, rolloff, self)
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        self.lowpass_filter_width, self.rolloff = int(lowpass_filter_width), float(rolloff)

    def forward(self, waveform: Tensor) -> Tensor:
        _check_waveform(waveform, self)
        with outside_autocast(waveform.device):  # signal processing: in the input's dtype
            return resample(waveform, self.orig_freq, self.new_freq,
                            lowpass_filter_width=self.lowpass_filter_width, rolloff=self.rolloff)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"orig_freq={self.orig_freq}, new_freq={self.new_freq}"


#: The most taps (output phases x kernel length) :func:`resample` builds: about 16 MB in float32.
#: Rates whose reduced ratio needs more (two large coprime rates) are refused with a message.
MAX_RESAMPLE_TAPS = 1 << 22


def _check_resample_config(orig_freq: Any, new_freq: Any, lowpass_filter_width: Any,
                           rolloff: Any, owner: object) -> None:
    for name, value in (("orig_freq", orig_freq), ("new_freq", new_freq),
                        ("lowpass_filter_width", lowpass_filter_width)):
        check_size(value, owner=owner, arg=name)
    check_positive(rolloff, owner=owner, arg="rolloff")
    if rolloff > 1:
        raise ValueError(f"{owner_name(owner)}: expected `rolloff` in (0, 1], got {rolloff!r}.")
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    width = math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))
    taps = new * (2 * width + orig)
    if taps > MAX_RESAMPLE_TAPS:
        raise ValueError(
            f"{owner_name(owner)}: resampling {orig_freq} -> {new_freq} Hz reduces to the ratio "
            f"{new}/{orig}, whose sinc kernel needs {taps} taps (at most {MAX_RESAMPLE_TAPS}); "
            f"choose rates with a larger common divisor or resample in two steps."
        )


def _check_waveform(waveform: Any, owner: object) -> None:
    name = owner_name(owner)
    if not isinstance(waveform, Tensor):
        raise TypeError(
            f"{name}: expected `waveform` to be a tensor of shape (..., S), got {type(waveform).__name__}."
        )
    if not waveform.is_floating_point():
        raise TypeError(f"{name}: expected `waveform` to be a floating-point tensor, got {waveform.dtype}.")
    if waveform.dim() < 1 or waveform.shape[-1] == 0:
        raise ShapeError(
            f"{name}: expected `waveform` of shape (..., S) with S >= 1, got {format_shape(waveform.shape)}."
        )


def _frames_float(frames: Tensor, owner: object) -> Tensor:
    if not isinstance(frames, Tensor) or frames.dim() < 3:
        got = format_shape(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        name = owner_name(owner)
        raise (ShapeError if isinstance(frames, Tensor) else TypeError)(
            f"{name}: expected `frames` of shape (..., C, H, W), got {got}."
        )
    if frames.dtype == torch.uint8:
        return frames.float().div(255.0)
    if not frames.is_floating_point():
        raise TypeError(f"{owner_name(owner)}: expected `frames` uint8 or floating, got {frames.dtype}.")
    return frames


class ResizeFrames(nn.Module):
    """Resize frames to ``(height, width)`` (bilinear, antialiased when shrinking).

    uint8 input is resized in float32 and rounded back to uint8; floating input keeps its dtype.

    Shape:
        - frames: (..., C, H, W)
        - output: (..., C, height, width)

    Example:
        >>> ResizeFrames((32, 48))(torch.zeros(2, 5, 3, 64, 96)).shape
        torch.Size([2, 5, 3, 32, 48])
    """

    def __init__(self, size: Sequence[int], *, antialias: bool = True) -> None:
        super().__init__()
        if len(size) != 2:
            raise ValueError(f"ResizeFrames: expected `size` as (height, width), got {size!r}.")
        for s in size:
            check_size(s, owner=self, arg="size")
        self.size = (int(size[0]), int(size[1]))
        self.antialias = antialias

    def forward(self, frames: Tensor) -> Tensor:
        x = _frames_float(frames, self)
        lead = x.shape[:-3]
        # Nothing to resize: interpolate rejects it. (Size.numel() would fix a symbolic batch.)
        if any(s == 0 for s in x.shape[:-2]):
            return x.new_zeros(*x.shape[:-2], *self.size).to(
                torch.uint8 if frames.dtype == torch.uint8 else x.dtype)
        flat = x.reshape(-1, *x.shape[-3:])  # (N, C, H, W)
        work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        out = F.interpolate(work, size=self.size, mode="bilinear", align_corners=False,
                            antialias=self.antialias)
        out = out.reshape(*lead, *out.shape[-3:])
        if frames.dtype == torch.uint8:
            return out.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return out.to(frames.dtype)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"size={self.size}, antialias={self.antialias}"


class NormalizeFrames(nn.Module):
    """``(frames - mean) / std`` per channel; uint8 frames are first scaled to [0, 1].

    Args:
        mean: One value per channel (default: ImageNet's RGB means).
        std: One value per channel (default: ImageNet's RGB standard deviations).

    Shape:
        - frames: (..., C, H, W), uint8 or floating
        - output: same shape, floating (float32 for uint8 input)

    Example:
        >>> NormalizeFrames()(torch.zeros(4, 3, 8, 8, dtype=torch.uint8)).dtype
        torch.float32
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"NormalizeFrames: `mean` and `std` need one value per channel, got {len(mean)} and {len(std)}.")
        for s in std:
            check_positive(s, owner=self, arg="std")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        x = _frames_float(frames, self)
        c = self.mean.shape[0]
        if x.shape[-3] != c:
            raise ShapeError(
                f"NormalizeFrames: expected `frames` of shape (..., C, H, W) with C={c}, "
                f"got {format_shape(x.shape)}."
            )
        mean = self.mean.to(x.device, x.dtype)[:, None, None]  # (C, 1, 1)
        std = self.std.to(x.device, x.dtype)[:, None, None]
        return (x - mean) / std

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
