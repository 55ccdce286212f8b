"""UTD-MHAD benchmark models: one encoder per sensor, and models at every fusion level.

Every model maps a batch ``{"x": {m: Tensor}, "mask": {m: (B, N) bool}, "times": ...}`` and a
presence mapping ``{m: (B,) bool}`` (True = observed; None = all) to class logits (B, 27).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..alignment import ModalityGraphAttention
from ..data.utd_mhad import skeleton_adjacency
from ..errors import ModalityError
from ..fusion import (
    AttentionFusion,
    CrossAttentionFusion,
    DataLevelFusion,
    DecisionFusion,
    GatedFusion,
    LowRankTensorFusion,
    ModalityDropout,
)
from ._utd_prep import _time_warp

__all__ = ["FEATURE_FUSIONS", "DecisionHead", "FusionHead", "ProductHead", "build_model", "pool"]

NUM_CLASSES = 27
DIM = 128
FEATURE_FUSIONS = ("attention", "gated", "low_rank", "cross_attention")
#: Inertial sequences are resampled to this many steps (chosen by leave-one-subject-out
#: cross-validation over the training subjects).
INERTIAL_STEPS = 100


class _ConvBlock(nn.Module):
    """Masked 1-D convolution over time, LayerNorm, GELU; stride s keeps every s-th step."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, 5, stride=stride, padding=2)
        self.norm = nn.LayerNorm(cout)
        self.stride = stride

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = x * mask[..., None]  # padded steps contribute nothing
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, ceil(T/s), C)
        mask = mask[:, :: self.stride]
        return F.gelu(self.norm(y)), mask


class TemporalEncoder(nn.Module):
    """(B, T, C) steps with a (B, T) mask -> tokens (B, T/4, DIM) and their mask."""

    def __init__(self, cin: int, strides: Sequence[int] = (2, 2, 1), dropout: float = 0.1) -> None:
        super().__init__()
        dims = [cin, 64, DIM, DIM][: len(strides) + 1]
        dims[-1] = DIM
        self.blocks = nn.ModuleList(
            _ConvBlock(a, b, s) for a, b, s in zip(dims[:-1], dims[1:], strides))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            x, mask = block(x, mask)
        return self.drop(x) * mask[..., None], mask


class InertialEncoder(nn.Module):
    """The wrist sensor's (B, T, 6) standardised accelerometer and gyroscope samples,
    resampled to ``steps`` steps, with each sensor's magnitude and the step-to-step
    differences of all six channels appended (14 channels), through a ``TemporalEncoder``:
    -> tokens (B, steps/4, DIM)."""

    def __init__(self, steps: int = 100) -> None:
        super().__init__()
        self.steps = steps
        self.temporal = TemporalEncoder(14)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        n = mask.sum(1)
        x, mask = _time_warp(x, n, self.steps / n.clamp_min(1).to(torch.float64),
                             torch.zeros(n.shape, dtype=torch.float64))
        diff = F.pad(x[:, 1:] - x[:, :-1], (0, 0, 1, 0))
        feats = torch.cat([x, x[..., :3].norm(dim=-1, keepdim=True),
                           x[..., 3:].norm(dim=-1, keepdim=True), diff], dim=-1)
        return self.temporal(feats * mask[..., None], mask)


class SkeletonEncoder(nn.Module):
    """Each joint's trajectory through a temporal convolution (stride 4), then graph
    attention over the 20 joints at every remaining step (the body's bones as the graph),
    then a frame projection: (B, T, 20, F) -> tokens (B, T/4, DIM)."""

    def __init__(self, cin: int = 6, joint_dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(cin, joint_dim)
        self.joint = nn.Parameter(torch.zeros(20, joint_dim))
        self.temporal = nn.ModuleList([_ConvBlock(joint_dim, joint_dim, 2),
                                       _ConvBlock(joint_dim, joint_dim, 2)])
        self.gat = ModalityGraphAttention(joint_dim, 4, num_layers=1,
                                          adjacency=skeleton_adjacency())
        self.frame = nn.Linear(20 * joint_dim, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, j = x.shape[0], x.shape[2]
        h = self.embed(x) + self.joint  # (B, T, 20, d)
        h = h.transpose(1, 2).flatten(0, 1)  # (B*20, T, d)
        m = mask.repeat_interleave(j, dim=0)  # (B*20, T)
        for block in self.temporal:
            h, m = block(h, m)
        steps = h.shape[1]
        h = h.unflatten(0, (b, j)).transpose(1, 2).flatten(0, 1)  # (B*T', 20, d)
        h = self.gat(h).unflatten(0, (b, steps))  # (B, T', 20, d)
        tokens = self.drop(F.gelu(self.norm(self.frame(h.flatten(2)))))  # (B, T', DIM)
        mask = m[::j]  # (B, T')
        return tokens * mask[..., None], mask


class DepthEncoder(nn.Module):
    """Depth-motion tokens: a small CNN over each time segment's mean depth frame and motion
    map (B, S, 2, 30, 40), then a temporal convolution: -> tokens (B, S, DIM)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(2, 16, 3, stride=2, padding=1), nn.GELU(),  # 15 x 20
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),  # 8 x 10
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d((3, 4)),
        )
        self.proj = nn.Linear(32 * 12, DIM)
        self.temporal = TemporalEncoder(DIM, strides=(1,))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, s = x.shape[:2]
        f = self.cnn(x.flatten(0, 1)).reshape(b, s, -1)  # (B, S, 384)
        return self.temporal(F.gelu(self.proj(f)), mask)


def make_encoder(sensor: str) -> nn.Module:
    if sensor == "inertial":
        return InertialEncoder(INERTIAL_STEPS)
    if sensor == "skeleton":
        return SkeletonEncoder()
    if sensor == "depth":
        return DepthEncoder()
    raise ValueError(f"unknown sensor {sensor!r}")


def _halve(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked means of neighbouring token pairs, repeated until at most 8 tokens remain."""
    while tokens.shape[1] > 8:
        if tokens.shape[1] % 2:
            tokens, mask = F.pad(tokens, (0, 0, 0, 1)), F.pad(mask, (0, 1))
        t = tokens.unflatten(1, (-1, 2))  # (B, N/2, 2, D)
        m = mask.unflatten(1, (-1, 2))[..., None]  # (B, N/2, 2, 1)
        tokens, mask = (t * m).sum(2) / m.sum(2).clamp_min(1), m.any(2)[..., 0]
    return tokens, mask


def pool(tokens: Tensor, mask: Tensor) -> Tensor:
    """Masked mean and max over tokens: (B, N, D) -> (B, 2D); a row with no token gives 0."""
    m = mask[..., None]
    mean = (tokens * m).sum(1) / m.sum(1).clamp_min(1)
    peak = tokens.masked_fill(~m, float("-inf")).amax(1)
    return torch.cat([mean, torch.where(m.any(1), peak, 0.0)], dim=-1)


class SingleModel(nn.Module):
    """One sensor: encoder, pooled tokens, linear classifier. Absent sensor -> zero logits."""

    def __init__(self, sensor: str) -> None:
        super().__init__()
        self.sensors = (sensor,)
        self.encoder = make_encoder(sensor)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * DIM, NUM_CLASSES))

    def forward(self, batch: Mapping[str, Any], present: Mapping[str, Tensor] | None = None
                ) -> Tensor:
        m = self.sensors[0]
        tokens, mask = self.encoder(batch["x"][m], batch["mask"][m])
        logits = self.head(pool(tokens, mask))
        if present is not None and m in present:
            logits = logits * present[m][:, None]
        return logits


class FusionHead(nn.Module):
    """Feature-level fusion over frozen sensor encoders: each sensor's tokens are pooled
    (masked mean and max) and fused by an mmfuse fusion module, or fused token by token by
    ``CrossAttentionFusion``; then a classifier. ``ModalityDropout`` (when ``dropout_p > 0``)
    marks whole sensors absent while training."""

    def __init__(self, sensors: Sequence[str], fusion: str, *, dropout_p: float = 0.0,
                 feature_dropout: float = 0.5) -> None:
        super().__init__()
        self.sensors, self.kind = tuple(sensors), fusion
        dims = {m: 2 * DIM for m in self.sensors}
        out = 2 * DIM
        self.fusion: nn.Module
        if fusion == "attention":
            self.fusion = AttentionFusion(dims, out)
        elif fusion == "gated":
            self.fusion = GatedFusion(dims, out)
        elif fusion == "low_rank":
            self.fusion = LowRankTensorFusion(dims, out, 8)
        elif fusion == "cross_attention":
            self.fusion = CrossAttentionFusion({m: DIM for m in self.sensors}, out,
                                               num_heads=4, depth=1, dropout=0.1)
        else:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FEATURE_FUSIONS}")
        self.drop = ModalityDropout(dropout_p) if dropout_p > 0 else None
        self.feature_drop = nn.Dropout(feature_dropout)
        self.head = nn.Sequential(nn.LayerNorm(out), nn.Dropout(0.3), nn.Linear(out, NUM_CLASSES))

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = None) -> Tensor:
        tok = {m: self.feature_drop(tokens[m]) for m in self.sensors}
        pooled = {m: pool(tok[m], masks[m]) for m in self.sensors}
        if self.drop is not None:
            present = self.drop(pooled, present)
        if self.kind == "cross_attention":
            short = {m: _halve(tok[m], masks[m]) for m in self.sensors}
            fused = self.fusion({m: t for m, (t, _) in short.items()},
                                {m: k for m, (_, k) in short.items()}, present)
        else:
            fused = self.fusion(pooled, present)
        return self.head(fused)


class DecisionHead(nn.Module):
    """Decision-level fusion of the frozen single-sensor classifiers: a learnable
    ``DecisionFusion`` (weights and per-sensor temperatures on the logits). Returns
    log-probabilities."""

    def __init__(self, sensors: Sequence[str], heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.sensors = tuple(sensors)
        self.heads = dict(heads)  # frozen, not registered: only the fusion is trained
        for h in self.heads.values():
            h.eval()
        self.decide = DecisionFusion(list(self.sensors), NUM_CLASSES, strategy="weighted",
                                     learnable=True, inputs="logits", learn_temperature=True)

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = None) -> Tensor:
        with torch.no_grad():
            logits = {m: self.heads[m](pool(tokens[m], masks[m])) for m in self.sensors}
        probs = self.decide(logits, present)
        return probs.clamp_min(1e-8).log()


class ProductHead(nn.Module):
    """The product of experts of the single-sensor classifiers (``DecisionFusion``'s
    ``"product"`` on their logits; no parameters of its own), differentiable through them.
    Returns log-probabilities."""

    def __init__(self, sensors: Sequence[str], heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.sensors = tuple(sensors)
        if set(heads) != set(self.sensors):
            raise ModalityError(f"ProductHead: expected one classifier per sensor of "
                                f"{list(self.sensors)}, got {sorted(heads)}.")
        self.heads = nn.ModuleDict(dict(heads))
        self.product = DecisionFusion(list(self.sensors), NUM_CLASSES, strategy="product",
                                      inputs="logits")

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = None) -> Tensor:
        logits = {m: self.heads[m](pool(tokens[m], masks[m])) for m in self.sensors}
        return self.product(logits, present).clamp_min(1e-12).log()


class DataLevelModel(nn.Module):
    """The source document's data-level fusion: ``DataLevelFusion`` samples the inertial
    stream (6 channels, 50 Hz) at each Kinect frame's time and appends it to every joint's
    features, and one skeleton model reads the aligned tensor (B, T, 20, 6 + 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.sensors = ("inertial", "skeleton")
        self.align = DataLevelFusion(6, 6, align="linear", audio="broadcast",
                                     layout="b t h w c", validate_times=False)
        self.encoder = SkeletonEncoder(cin=12)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * DIM, NUM_CLASSES))

    def forward(self, batch: Mapping[str, Any], present: Mapping[str, Tensor] | None = None
                ) -> Tensor:
        sk, iner = batch["x"]["skeleton"], batch["x"]["inertial"]
        if present is not None and "inertial" in present:
            iner = iner * present["inertial"][:, None, None]
        if present is not None and "skeleton" in present:
            sk = sk * present["skeleton"][:, None, None, None]
        frames = sk.permute(0, 1, 3, 2)[..., None]  # (B, T, 6, 20, 1)
        fused = self.align(frames, batch["times"]["skeleton"], iner.transpose(1, 2),
                           batch["times"]["inertial"])  # (B, T, 20, 1, 12)
        tokens, mask = self.encoder(fused[:, :, :, 0], batch["mask"]["skeleton"])
        return self.head(pool(tokens, mask))


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """An end-to-end model from its spec: ``{"kind": "single" | "data", ...}``."""
    if spec["kind"] == "single":
        return SingleModel(spec["sensors"][0])
    if spec["kind"] == "data":
        return DataLevelModel()
    raise ValueError(f"not an end-to-end model kind: {spec['kind']!r}")
