"""UTD-MHAD benchmark inputs: normalised, padded tensors per split, and training augmentation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from ..data.utd_mhad import JOINTS, UTDMHAD, collate_utd_mhad

__all__ = ["SENSORS", "Split", "load_splits", "make_batch"]

SENSORS = ("inertial", "skeleton", "depth")
DEPTH_SIZE = (30, 40)  # area-averaged from 240 x 320 (8 x 8 blocks)
DEPTH_SEGMENTS = 8  # depth tokens: mean frame and motion map of 8 equal time segments
_HIP, _SHOULDER = JOINTS.index("hip_center"), JOINTS.index("shoulder_center")

Split = dict[str, Any]  # {"x": {m: T}, "mask": {m: T}, "times": {m: T}, "label", "subject"}


def _read_all(root: str, subjects: Sequence[int], workers: int,
              actions: Sequence[int] | None) -> list[dict[str, Any]]:
    ds = UTDMHAD(root, subjects=subjects, actions=actions, depth_size=DEPTH_SIZE)
    if workers <= 1:
        return [ds[i] for i in range(len(ds))]
    # Decompressing the depth files dominates; zlib and numpy release the GIL, so threads
    # overlap (processes forked after torch's thread pool started can deadlock).
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(ds.__getitem__, range(len(ds))))


def _skeleton_features(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, 20, 3) metres -> (B, T, 20, 6): position about the first hip centre in torso
    lengths, and its frame-to-frame velocity (zero at the first and padded frames)."""
    origin = x[:, :1, _HIP : _HIP + 1]  # (B, 1, 1, 3)
    torso = (x[:, :, _SHOULDER] - x[:, :, _HIP]).norm(dim=-1)  # (B, T)
    torso = (torso * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B,)
    pos = (x - origin) / torso.clamp_min(1e-3)[:, None, None, None]
    vel = torch.zeros_like(pos)
    vel[:, 1:] = (pos[:, 1:] - pos[:, :-1]) * 5.0
    keep = mask[:, :, None, None]
    vel[:, 1:] = vel[:, 1:] * keep[:, :-1]
    return torch.cat([pos, vel], dim=-1) * keep


def _depth_tokens(frames: Tensor, mask: Tensor) -> Tensor:
    """(B, T, H, W) metres -> (B, S, 2, H, W): per time segment the mean frame and the mean
    absolute frame difference (a depth motion map), depth taken relative to the person."""
    out = frames.new_zeros(frames.shape[0], DEPTH_SEGMENTS, 2, *frames.shape[2:])
    for b in range(frames.shape[0]):
        d = frames[b, : int(mask[b].sum())]  # (T_b, H, W)
        valid = d[0] > 0
        ref = d[0][valid].quantile(0.05) if bool(valid.any()) else d.new_tensor(2.0)
        d = torch.where(d > 0, (d - ref).clamp(-0.5, 1.5), d.new_tensor(1.5))
        motion = torch.cat([torch.zeros_like(d[:1]), (d[1:] - d[:-1]).abs()])
        edges = torch.linspace(0, d.shape[0], DEPTH_SEGMENTS + 1).round().long().tolist()
        for s in range(DEPTH_SEGMENTS):
            lo, hi = edges[s], max(edges[s + 1], edges[s] + 1)
            lo = min(lo, d.shape[0] - 1)
            out[b, s, 0] = d[lo:hi].mean(0)
            out[b, s, 1] = motion[lo:hi].mean(0) * 10.0
    return out


def load_splits(root: str | os.PathLike[str], train: Sequence[int], test: Sequence[int], *,
                workers: int = 2, actions: Sequence[int] | None = None) -> tuple[Split, Split]:
    """Read, normalise and pad both splits. Inertial channels are standardised with the
    training split's statistics only."""
    splits = []
    for subjects in (train, test):
        items = _read_all(str(root), subjects, workers, actions)
        b = collate_utd_mhad(items)
        x = {"inertial": b["streams"]["inertial"],
             "skeleton": _skeleton_features(b["streams"]["skeleton"], b["masks"]["skeleton"]),
             "depth": _depth_tokens(b["streams"]["depth"], b["masks"]["depth"])}
        masks = {m: b["masks"][m] for m in ("inertial", "skeleton")}
        masks["depth"] = torch.ones(len(items), DEPTH_SEGMENTS, dtype=torch.bool)
        splits.append({"x": x, "mask": masks, "times": {m: b["times"][m] for m in
                                                       ("inertial", "skeleton")},
                       "label": b["label"], "subject": b["subject"]})
    tr = splits[0]
    m = tr["mask"]["inertial"][..., None]
    mean = (tr["x"]["inertial"] * m).sum((0, 1)) / m.sum()
    std = (((tr["x"]["inertial"] - mean) * m) ** 2).sum((0, 1)).div(m.sum()).sqrt()
    for sp in splits:
        sp["x"]["inertial"] = (sp["x"]["inertial"] - mean) / std * sp["mask"]["inertial"][..., None]
    return splits[0], splits[1]


def _time_warp(x: Tensor, lengths: Tensor, factors: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """Resample each row's first ``lengths[b]`` steps, from ``starts[b]`` (a fraction of the
    length), to ``factors[b]`` times as many steps (linear interpolation). -> (x', mask')."""
    n = lengths.to(torch.float64)
    span = n * (1.0 - starts)
    new = (span * factors).round().clamp_min(2).long()  # (B,)
    t_new = int(new.max())
    j = torch.arange(t_new, dtype=torch.float64)[None]  # (1, T')
    pos = n[:, None] * starts[:, None] + j * ((span[:, None] - 1) / (new[:, None] - 1).clamp_min(1))
    pos = pos.clamp(max=(n[:, None] - 1).clamp_min(0))
    lo = pos.floor().long()
    hi = (lo + 1).minimum((lengths[:, None] - 1).clamp_min(0))
    w = (pos - lo).to(x.dtype)
    shape = (x.shape[0], t_new) + (1,) * (x.dim() - 2)
    g_lo = x.gather(1, lo.view(shape).expand(-1, -1, *x.shape[2:]))
    g_hi = x.gather(1, hi.view(shape).expand(-1, -1, *x.shape[2:]))
    mask = j < new[:, None]
    out = (g_lo + (g_hi - g_lo) * w.view(shape)) * mask.view(shape)
    return out, mask


def _rotate_y(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate (B, T, J, 6) joint positions and velocities about the vertical axis."""
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    out = x.clone()
    for k in (0, 3):
        px, pz = x[..., k], x[..., k + 2]
        out[..., k], out[..., k + 2] = c * px + s * pz, -s * px + c * pz
    return out


def make_batch(split: Split, idx: Tensor, sensors: Sequence[str], *, augment: bool,
               generator: torch.Generator | None = None) -> dict[str, Any]:
    """Rows ``idx`` trimmed to their longest streams; with ``augment``, the same random time
    stretch and crop for the inertial and skeleton streams of a sample (they stay aligned),
    amplitude and rotation jitter, and a small spatial shift of the depth maps."""
    g = generator
    x = {m: split["x"][m][idx] for m in sensors}
    mask = {m: split["mask"][m][idx] for m in sensors}
    times = {m: split["times"][m][idx] for m in sensors if m in split["times"]}
    b = idx.numel()
    if augment:
        factors = torch.empty(b, dtype=torch.float64).uniform_(0.8, 1.2, generator=g)
        starts = torch.empty(b, dtype=torch.float64).uniform_(0.0, 0.1, generator=g)
        for m in ("inertial", "skeleton"):
            if m not in x:
                continue
            x[m], mask[m] = _time_warp(x[m], mask[m].sum(1), factors, starts)
            t_end = times[m].gather(1, (split["mask"][m][idx].sum(1, keepdim=True) - 1))
            times[m] = (torch.arange(x[m].shape[1], dtype=torch.float64)[None]
                        / mask[m].sum(1, keepdim=True).clamp_min(1) * t_end)
        if "inertial" in x:
            gain = 1 + 0.1 * torch.randn(b, 1, x["inertial"].shape[-1], generator=g)
            noise = 0.05 * torch.randn(x["inertial"].shape, generator=g)
            x["inertial"] = (x["inertial"] * gain + noise) * mask["inertial"][..., None]
        if "skeleton" in x:
            angle = (torch.rand(b, generator=g) - 0.5) * (math.pi / 6)
            scale = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
            x["skeleton"] = _rotate_y(x["skeleton"], angle) * scale
        if "depth" in x:
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            x["depth"] = x["depth"].roll((dy, dx), dims=(-2, -1))
    for m in list(x):
        if m in ("inertial", "skeleton"):
            t = int(mask[m].sum(1).max())
            x[m], mask[m] = x[m][:, :t], mask[m][:, :t]
            times[m] = times[m][:, :t]
    return {"x": x, "mask": mask, "times": times, "label": split["label"][idx]}
