"""The demo's model: every trainable part by name, and one forward pass through all of them.

Two encoders (image, audio) feed a linear head each, a decision-level and a feature-level
fusion and a contrastive projection; a data-level classifier reads both raw streams put on one
timeline. :func:`forward` returns the outputs of all of them, keyed as in :data:`ROWS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # torch loads only when the demo runs: `mmfuse --help` is quick
    import torch
    from torch import Tensor, nn

    from ..data import AVSplit
    from ..encoders import ImageEncoder

__all__ = ["FRAMES", "HOP", "NAMES", "ROWS", "build_model", "forward", "standardise", "timelines"]

NAMES = ("image", "audio")
DIM = 32  # feature size of each encoder
HOP = 128  # spectrogram hop, samples (8 kHz audio: 16 ms steps)
FRAMES = 12  # data level: the image repeated as this many frames over the clip
AUDIO_CHANNELS = 6  # data level: learned projection of the mel bands per frame
ROWS = (  # the classifiers, as keyed by `forward`, and what each is
    ("image only", "ImageEncoder + linear head"),
    ("audio only", "AudioEncoder + linear head"),
    ("data level", "DataLevelFusion + CNN"),
    ("feature level", "AttentionFusion"),
    ("decision level", "DecisionFusion"),
)


def build_model(n_mels: int, device: torch.device) -> nn.ModuleDict:
    """Every trainable part of the demo, by name.

    Example:
        >>> import torch
        >>> model = build_model(16, torch.device("cpu"))
        >>> [name for name in model if name.startswith("head_")]
        ['head_image', 'head_audio', 'head_attention', 'head_data']
    """
    from torch import nn

    from ..alignment import InfoNCELoss
    from ..encoders import AudioEncoder, ImageEncoder
    from ..fusion import AttentionFusion, DataLevelFusion, DecisionFusion

    data_channels = FRAMES * (1 + AUDIO_CHANNELS)
    return nn.ModuleDict({
        "image": ImageEncoder(1, DIM, width=16, depth=2),
        # 8x8 digits: keep where things are (the 4x4 token grid, flattened), not a mean over it
        "image_pool": nn.Sequential(nn.Flatten(), nn.Linear(16 * DIM, DIM)),
        "audio": AudioEncoder(DIM, n_mels=n_mels, width=16, depth=3),
        "head_image": nn.Linear(DIM, 10),
        "head_audio": nn.Linear(DIM, 10),
        "decision": DecisionFusion(list(NAMES), 10, strategy="weighted", inputs="logits",
                                   learnable=True),
        "attention": AttentionFusion({m: DIM for m in NAMES}, DIM, hidden=DIM),
        "head_attention": nn.Sequential(nn.GELU(), nn.Linear(DIM, 10)),
        "embed_image": nn.Linear(DIM, DIM),
        "embed_audio": nn.Linear(DIM, DIM),
        "infonce": InfoNCELoss(temperature=0.1),
        "data_level": DataLevelFusion(1, n_mels, align="linear", audio="project",
                                      audio_channels=AUDIO_CHANNELS, layout="b (t c) h w"),
        "head_data": nn.Sequential(  # (B, T * (1 + k), 8, 8) -> (B, 10)
            nn.Conv2d(data_channels, 48, 3, padding=1), nn.GELU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)),
    }).to(device)


def forward(model: nn.ModuleDict, batch: AVSplit, times: tuple[Tensor, Tensor],
            present: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Logits of every classifier (the decision level: log-probabilities), the attention
    weights and the two embeddings. ``present`` goes to both fusions: ModalityDropout's draw in
    training, a modality marked absent in evaluation."""
    tokens = cast("ImageEncoder", model["image"]).forward_tokens(batch.images)  # (B, 16, D)
    feats = {"image": model["image_pool"](tokens), "audio": model["audio"](batch.audio)}
    logits = {m: model[f"head_{m}"](feats[m]) for m in NAMES}
    fused = model["attention"](feats, present, return_weights=True)
    b, frame_times, spec_times = len(batch.labels), times[0], times[1]
    frames = batch.images[:, None].expand(b, FRAMES, *batch.images.shape[1:])  # (B, T, 1, 8, 8)
    spec = batch.audio  # (B, F, S), standardised per clip
    grid = model["data_level"](frames, frame_times, spec, spec_times)  # (B, T * (1 + k), 8, 8)
    return {
        "image only": logits["image"],
        "audio only": logits["audio"],
        "data level": model["head_data"](grid),
        "feature level": model["head_attention"](fused.fused),
        "decision level": model["decision"](logits, present).clamp_min(1e-8).log(),
        "attention weights": fused.weights,
        "embed image": model["embed_image"](feats["image"]),
        "embed audio": model["embed_audio"](feats["audio"]),
    }


def standardise(split: AVSplit) -> AVSplit:
    """Each clip's log-mel spectrogram to zero mean and unit variance (for the data level)."""
    a = split.audio
    a = (a - a.mean(dim=(1, 2), keepdim=True)) / a.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    return split._replace(audio=a)


def timelines(steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Times, in seconds, of the data level's ``FRAMES`` image frames (spread evenly over the
    clip) and of the ``steps`` spectrogram steps (``HOP`` samples apart).

    Example:
        >>> import torch
        >>> frame_times, step_times = timelines(4, torch.device("cpu"))
        >>> frame_times.shape, [round(t, 3) for t in step_times.tolist()]
        (torch.Size([12]), [0.0, 0.016, 0.032, 0.048])
        >>> bool(frame_times[0] > 0 and frame_times[-1] < 4 * 0.016)  # inside the clip
        True
    """
    import torch

    from ..data.av_digits import SAMPLE_RATE

    clip = steps * HOP / SAMPLE_RATE  # seconds covered by the spectrogram
    return ((torch.arange(FRAMES, device=device) + 0.5) * clip / FRAMES,  # (T,) frame times
            torch.arange(steps, device=device) * HOP / SAMPLE_RATE)  # (S,) step times
