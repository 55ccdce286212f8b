"""A small log-mel + CNN audio encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_inputs,
    check_positive,
    check_size,
    check_tensor,
    format_shape,
)
from ..errors import ShapeError
from ..functional.audio import log_mel_spectrogram, mel_filterbank
from ..functional.audio.spectral import PAD_MODES, SCALES
from ._layers import ConvBlock

__all__ = ["AudioEncoder"]


class AudioEncoder(nn.Module):
    """Reference audio encoder: log-mel spectrogram, then a small 2-D CNN over (mel, time).

    Takes either waveforms (B, S), turned into a log-mel spectrogram with
    :func:`mmfuse.functional.log_mel_spectrogram` (the mel filterbank is a buffer), or a
    precomputed log-mel spectrogram (B, n_mels, frames). Each spectrogram is standardised per
    sample (zero mean, unit variance over all its bins) unless ``normalize=False``. Batches hold
    clips of one length: pad or crop them before.

    ``forward`` gives one vector per clip (the mean of the tokens); :meth:`forward_tokens` one
    token per time step of the final grid, (B, N, D): the CNN's channels of every remaining mel
    band at that step, projected to D.

    Args:
        out_dim: Feature size D.
        sample_rate: Sampling rate of the waveforms, Hz.
        n_mels: Mel bands (also the F a precomputed spectrogram must have).
        n_fft: FFT size of the spectrogram.
        hop_length: Hop between frames (default ``n_fft // 4``).
        width: Channels of the conv blocks.
        depth: Number of conv blocks; each after the first halves mel and time.
        normalize: Standardise each spectrogram.
        mel_scale: ``"htk"`` or ``"slaney"`` mel scale.
        norm: None, or ``"slaney"`` (mel triangles of constant area, librosa's default).
        pad_mode: Padding of the centred frames: ``"reflect"`` (default) or ``"constant"``
            (librosa's default), ``"replicate"``, ``"circular"``.
        scale: ``"log"`` (natural log of mel power + 1e-10, default) or ``"db"``
            (``librosa.power_to_db`` with ``ref=1``, ``amin=1e-10``).
        top_db: With ``scale="db"``, the dynamic range kept below each clip's peak (None: all).

    Shape:
        - audio: (B, S) waveform or (B, n_mels, frames) log-mel
        - output: (B, D); tokens: (B, N, D), N = frames after the CNN's strides

    Example:
        >>> enc = AudioEncoder(32, sample_rate=8000, n_mels=20)
        >>> enc(torch.randn(2, 4000)).shape
        torch.Size([2, 32])
    """

    filterbank: Tensor

    def __init__(
        self,
        out_dim: int,
        *,
        sample_rate: int = 16000,
        n_mels: int = 40,
        n_fft: int = 400,
        hop_length: int | None = None,
        width: int = 32,
        depth: int = 3,
        normalize: bool = True,
        mel_scale: str = "htk",
        norm: str | None = None,
        pad_mode: str = "reflect",
        scale: str = "log",
        top_db: float | None = 80.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_positive(sample_rate, owner=self, arg="sample_rate")
        for arg, v in (("out_dim", out_dim), ("n_mels", n_mels), ("n_fft", n_fft),
                       ("width", width), ("depth", depth)):
            check_size(v, owner=self, arg=arg)
        if hop_length is not None:
            check_size(hop_length, owner=self, arg="hop_length")
        self.out_dim, self.sample_rate, self.n_mels, self.n_fft = out_dim, sample_rate, n_mels, n_fft
        self.hop_length = hop_length or n_fft // 4
        self.width, self.depth, self.normalize = width, depth, normalize
        check_choice(pad_mode, PAD_MODES, owner=self, arg="pad_mode")
        check_choice(scale, SCALES, owner=self, arg="scale")
        if top_db is not None:
            check_positive(top_db, owner=self, arg="top_db", allow_zero=True)
        self.mel_scale, self.norm, self.pad_mode = mel_scale, norm, pad_mode
        self.scale, self.top_db = scale, top_db
        fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, mel_scale=mel_scale, norm=norm,
                            device=device, dtype=torch.float32)
        self.register_buffer("filterbank", fb, persistent=False)  # (n_fft//2+1, n_mels)
        self.blocks = nn.Sequential(*[
            ConvBlock(1 if i == 0 else width, width, 1 if i == 0 else 2, **dd)
            for i in range(depth)
        ])
        bands = n_mels
        for _ in range(depth - 1):
            bands = (bands + 1) // 2  # each stride-2 block: ceil(F / 2)
        self.bands = bands
        self.proj = nn.Linear(width * bands, out_dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.Linear)):
                m.reset_parameters()

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(B, S) waveform to the (B, n_mels, frames) log-mel spectrogram the encoder uses."""
        sizes = check_tensor(waveform, "B S", owner=self, arg="audio")
        if sizes["S"] == 0:
            raise ShapeError(f"AudioEncoder: expected `audio` of shape (B, S) with S >= 1 "
                             f"samples, got {format_shape(waveform.shape)}.")
        if sizes["B"] == 0:  # torch.stft rejects an empty batch; the result is simply empty
            return waveform.new_zeros(0, self.n_mels, 1 + sizes["S"] // self.hop_length)
        return log_mel_spectrogram(waveform, self.sample_rate, n_fft=self.n_fft,
                                   hop_length=self.hop_length, n_mels=self.n_mels,
                                   filterbank=self.filterbank, pad_mode=self.pad_mode,
                                   scale=self.scale, top_db=self.top_db)

    def forward_tokens(self, audio: Tensor) -> Tensor:
        """(B, N, D): one token per time step of the CNN's output grid."""
        if isinstance(audio, Tensor) and audio.dim() == 2:
            check_inputs(self, {"audio": audio}, dtype=False)  # cast to the parameters' dtype
            spec = self.log_mel(audio)
        elif isinstance(audio, Tensor) and audio.dim() == 3:
            check_tensor(audio, "B F S", owner=self, arg="audio", F=self.n_mels)
            if audio.shape[2] == 0:
                raise ShapeError(f"AudioEncoder: expected `audio` of shape (B, F, S) with "
                                 f"F={self.n_mels} and S >= 1 frames, got {format_shape(audio.shape)}.")
            check_inputs(self, {"audio": audio}, dtype=False)
            spec = audio
        else:
            shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ShapeError(
                f"AudioEncoder: expected `audio` of shape (B, S) (waveform) or (B, F, S) with "
                f"F={self.n_mels} (log-mel), got {shape}."
            )
        if not spec.is_floating_point():
            raise TypeError(
                f"AudioEncoder: expected `audio` to be a floating-point tensor, got {spec.dtype}."
            )
        x = spec.to(next(self.blocks.parameters()).dtype)  # the convs' (a quantized proj has none)
        if self.normalize:  # per-sample standardisation, statistics in float32
            xf = x.float()
            mean = xf.mean(dim=(1, 2), keepdim=True)
            centred = xf - mean
            std = centred.square().mean(dim=(1, 2), keepdim=True).sqrt()
            x = (centred / (std + 1e-5)).to(x.dtype)
        grid = self.blocks(x[:, None])  # (B, width, F', S')
        frames = grid.flatten(1, 2).transpose(1, 2)  # (B, S', width * F'): bands kept apart
        return self.proj(frames)  # (B, S', D)

    def forward(self, audio: Tensor) -> Tensor:
        return self.forward_tokens(audio).mean(dim=1)  # (B, D)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"out_dim={self.out_dim}, sample_rate={self.sample_rate}, n_mels={self.n_mels}, "
                f"n_fft={self.n_fft}, hop_length={self.hop_length}, width={self.width}, "
                f"depth={self.depth}")
