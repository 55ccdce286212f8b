"""Contract cases for the perception transforms (the parameter-free nn.Modules)."""

from __future__ import annotations

import torch

from mmfuse.errors import ShapeError
from mmfuse.perception import MFCC, LogMelSpectrogram, NormalizeFrames, Resample, ResizeFrames

from ..registry import BadInput, ContractCase, register

S = 800  # waveform samples: 0.05 s at 16 kHz


# The transforms have no parameters: the inputs require grad so the gradient check has a graph
# (and checks that a finite gradient reaches the input, as when a transform sits in a model).
def waveform(batch: int, gen: torch.Generator) -> dict:
    return {"waveform": torch.randn(batch, S, generator=gen).requires_grad_()}


def frames(batch: int, gen: torch.Generator) -> dict:
    return {"frames": torch.rand(batch, 3, 12, 16, generator=gen).requires_grad_()}


def bad_waveform(kwargs: dict) -> list[BadInput]:
    x = kwargs["waveform"]
    return [
        BadInput("integer waveform", {"waveform": x.long()}, TypeError, "waveform"),
        BadInput("empty waveform", {"waveform": x[:, :0]}, ShapeError, "waveform"),
    ]


def bad_frames(kwargs: dict) -> list[BadInput]:
    x = kwargs["frames"]
    return [
        BadInput("frames without channels", {"frames": x[:, 0, 0]}, ShapeError, "frames"),
        BadInput("integer frames", {"frames": x.long()}, TypeError, "frames"),
    ]

register(ContractCase(
    id="LogMelSpectrogram",
    build=lambda **dd: LogMelSpectrogram(16000, n_fft=128, hop_length=64, n_mels=16, **dd),
    inputs=waveform,
    out_shape=lambda b: (b, 16, 1 + S // 64),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_waveform,
))
register(ContractCase(
    id="MFCC",
    build=lambda **dd: MFCC(16000, n_mfcc=8, n_mels=16, n_fft=128, hop_length=64, **dd),
    inputs=waveform,
    out_shape=lambda b: (b, 8, 1 + S // 64),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_waveform,
))
register(ContractCase(  # librosa's conventions: decibels, slaney filters, zero padding
    id="LogMelSpectrogram-db",
    build=lambda **dd: LogMelSpectrogram(16000, n_fft=128, hop_length=64, n_mels=16, scale="db",
                                         ref="max", top_db=60.0, mel_scale="slaney",
                                         norm="slaney", pad_mode="constant", **dd),
    inputs=waveform,
    out_shape=lambda b: (b, 16, 1 + S // 64),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_waveform,
))
register(ContractCase(
    id="MFCC-db-uncentred",
    build=lambda **dd: MFCC(16000, n_mfcc=8, n_mels=16, n_fft=128, hop_length=64, scale="db",
                            center=False, **dd),
    inputs=waveform,
    out_shape=lambda b: (b, 8, 1 + (S - 128) // 64),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_waveform,
))
register(ContractCase(
    id="Resample",
    build=lambda **dd: Resample(16000, 12000),
    inputs=waveform,
    out_shape=lambda b: (b, S * 3 // 4),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_waveform,
))
register(ContractCase(
    id="ResizeFrames",
    build=lambda **dd: ResizeFrames((6, 8)),
    inputs=frames,
    out_shape=lambda b: (b, 3, 6, 8),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_frames,
))
register(ContractCase(
    id="NormalizeFrames",
    build=lambda **dd: NormalizeFrames(),
    inputs=frames,
    out_shape=lambda b: (b, 3, 12, 16),
    empty_batch="empty",
    precision="data",  # signal processing, outside autocast
    bad_inputs=bad_frames,
))
