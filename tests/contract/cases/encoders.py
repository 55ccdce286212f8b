"""Contract cases: the reference encoders and the backbone adapter."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse import ShapeError
from mmfuse.encoders import AudioEncoder, BackboneAdapter, ImageEncoder, TextEncoder, VideoEncoder

from ..registry import BadInput, ContractCase, register


def _bad_rank_channels_dtype(arg: str, channel_dim: int):
    """Bad inputs for a (B, ..., C, ...) tensor: wrong rank, wrong channels, integer dtype."""

    def bad(kwargs: dict) -> list[BadInput]:
        x = kwargs[arg]
        more = torch.cat([x, x.narrow(channel_dim, 0, 1)], dim=channel_dim)
        return [
            BadInput(f"`{arg}` wrong rank", {arg: x[..., None]}, ShapeError, arg),
            BadInput(f"`{arg}` no batch", {arg: x[0]}, ShapeError, arg),
            BadInput(f"`{arg}` wrong channels", {arg: more}, ShapeError, arg),
            BadInput(f"`{arg}` integer dtype", {arg: x.long()}, TypeError, arg),
        ]

    return bad


register(ContractCase(
    id="ImageEncoder",
    build=lambda **dd: ImageEncoder(2, 12, width=8, depth=2, **dd),
    inputs=lambda b, g: {"images": torch.randn(b, 2, 8, 6, generator=g)},
    out_shape=lambda b: (b, 12),
    bad_inputs=_bad_rank_channels_dtype("images", 1),
    empty_batch="empty",
))

_AUDIO = dict(sample_rate=8000, n_mels=12, n_fft=64, width=8, depth=2)


def _audio_bad(kwargs: dict) -> list[BadInput]:
    x = kwargs["audio"]
    return [
        BadInput("`audio` rank 4", {"audio": x[:, None, None]}, ShapeError, "audio"),
        BadInput("`audio` integer dtype", {"audio": x.long()}, TypeError, "audio"),
    ] + ([BadInput("`audio` wrong mel bands", {"audio": x[:, 1:]}, ShapeError, "audio")]
         if x.dim() == 3 else [])


register(ContractCase(
    id="AudioEncoder-waveform",
    build=lambda **dd: AudioEncoder(10, **_AUDIO, **dd),
    inputs=lambda b, g: {"audio": torch.randn(b, 400, generator=g)},
    out_shape=lambda b: (b, 10),
    bad_inputs=_audio_bad,
    empty_batch="empty",
))
register(ContractCase(
    id="AudioEncoder-waveform-db",
    build=lambda **dd: AudioEncoder(10, **_AUDIO, scale="db", top_db=60.0, mel_scale="slaney",
                                    norm="slaney", pad_mode="constant", **dd),
    inputs=lambda b, g: {"audio": torch.randn(b, 400, generator=g)},
    out_shape=lambda b: (b, 10),
    bad_inputs=_audio_bad,
    empty_batch="empty",
))
register(ContractCase(
    id="AudioEncoder-logmel",
    build=lambda **dd: AudioEncoder(10, **_AUDIO, **dd),
    inputs=lambda b, g: {"audio": torch.randn(b, 12, 9, generator=g)},
    out_shape=lambda b: (b, 10),
    bad_inputs=_audio_bad,
    empty_batch="empty",
))


def _text_inputs(b: int, g: torch.Generator) -> dict:
    ids = torch.randint(3, 259, (b, 7), generator=g)
    lengths = torch.randint(1, 8, (b,), generator=g)
    mask = torch.arange(7)[None, :] < lengths[:, None]  # (B, 7), True = keep
    return {"ids": ids, "mask": mask}


def _text_bad(kwargs: dict) -> list[BadInput]:
    ids, mask = kwargs["ids"], kwargs["mask"]
    return [
        BadInput("`ids` float", {"ids": ids.float(), "mask": mask}, TypeError, "ids"),
        BadInput("`ids` wrong rank", {"ids": ids[..., None], "mask": mask}, ShapeError, "ids"),
        BadInput("`ids` too long", {"ids": ids.repeat(1, 20), "mask": None}, ValueError, "ids"),
        BadInput("`mask` not bool", {"ids": ids, "mask": mask.float()}, TypeError, "mask"),
        BadInput("`mask` wrong length", {"ids": ids, "mask": mask[:, 1:]}, ShapeError, "mask"),
    ]


# Token masks are exercised in tests/encoders/test_text.py: the suite's mask check writes random
# floats into masked positions, which are not valid token ids.
register(ContractCase(
    id="TextEncoder",
    build=lambda **dd: TextEncoder(10, width=16, depth=1, num_heads=2, max_len=16, **dd),
    inputs=_text_inputs,
    out_shape=lambda b: (b, 10),
    bad_inputs=_text_bad,
    empty_batch="empty",
))

register(ContractCase(
    id="VideoEncoder",
    build=lambda **dd: VideoEncoder(3, 8, patch_size=4, **dd),
    inputs=lambda b, g: {"video": torch.randn(b, 2, 3, 8, 4, generator=g)},
    out_shape=lambda b: (b, 2, 2, 1, 8),
    bad_inputs=_bad_rank_channels_dtype("video", 2),
    empty_batch="empty",
))


def _backbone(**dd: object) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.GELU())


register(ContractCase(
    id="BackboneAdapter",
    build=lambda **dd: BackboneAdapter(_backbone(), 6, **dd),
    inputs=lambda b, g: {"x": torch.randn(b, 3, 4, generator=g)},
    out_shape=lambda b: (b, 6),
    empty_batch="empty",
))
register(ContractCase(
    id="BackboneAdapter-frozen-proj",
    build=lambda **dd: BackboneAdapter(_backbone(), 6, out_dim=5, freeze=True, **dd),
    inputs=lambda b, g: {"x": torch.randn(b, 3, 4, generator=g)},
    out_shape=lambda b: (b, 5),
    grad_exempt=("backbone.",),  # frozen on purpose
    empty_batch="empty",
))
register(ContractCase(
    id="BackboneAdapter-tokens-mean",
    build=lambda **dd: BackboneAdapter(nn.Linear(5, 6), 6, out_dim=4, pool="mean", **dd),
    inputs=lambda b, g: {"x": torch.randn(b, 7, 5, generator=g)},
    out_shape=lambda b: (b, 4),
    empty_batch="empty",
))
