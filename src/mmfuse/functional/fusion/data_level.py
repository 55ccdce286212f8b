"""Data-level fusion math: put an audio spectrogram on a video's frame times and image grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_choice, check_same_device, check_size, check_tensor

__all__ = [
    "ALIGN_MODES",
    "GRID_MODES",
    "align_to_times",
    "spectrogram_to_grid",
    "time_order_violations",
    "time_overlap",
]

ALIGN_MODES = ("nearest", "linear")
GRID_MODES = ("broadcast", "resize")


def _times_dtype(*times: Tensor) -> torch.dtype:
    dt = torch.float32
    for t in times:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def align_to_times(values: Tensor, times: Tensor, query: Tensor, mode: str = "nearest") -> Tensor:
    """Sample a time series at other times, per row.

    ``mode="nearest"`` takes the step whose time is closest (the earlier one on a tie);
    ``"linear"`` interpolates between the two steps around each query time. Query times outside
    ``[times[0], times[-1]]`` take the first or last step (no extrapolation). Times must be sorted
    along their last dimension (not checked here: this function reads no values to decide).

    Shape:
        - values: (B, F, S); times: (B, S), non-decreasing; query: (B, T)
        - output: (B, T, F), in ``values``' dtype
    """
    owner = "align_to_times"
    check_choice(mode, ALIGN_MODES, owner=owner, arg="mode")
    n = check_tensor(values, "B F S", owner=owner, arg="values", floating=None)
    s = n["S"]
    check_tensor(times, "B S", owner=owner, arg="times", floating=None, B=n["B"], S=s)
    check_tensor(query, "B T", owner=owner, arg="query", floating=None, B=n["B"])
    check_same_device({"values": values, "times": times, "query": query}, owner=owner)
    if s == 0:
        raise ValueError(f"{owner}: expected at least one time step in `values`, got S=0.")
    dt = _times_dtype(times, query)
    t_src = times.to(dt).contiguous()  # (B, S)
    t_q = query.to(dt).contiguous()  # (B, T)
    # (B, T): first step with time >= query, i.e. the number of earlier steps (the times are
    # sorted). Counted rather than torch.searchsorted, which has no ONNX lowering; this holds a
    # (B, T, S) bool temporary.
    idx = (t_src[:, None, :] < t_q[:, :, None]).sum(-1)
    hi = idx.clamp(max=s - 1)
    lo = (idx - 1).clamp(min=0)
    t_lo, t_hi = t_src.gather(1, lo), t_src.gather(1, hi)  # (B, T)
    span = t_hi - t_lo
    frac = ((t_q - t_lo) / span.where(span > 0, torch.ones_like(span))).clamp(0.0, 1.0)
    frac = frac.where(span > 0, torch.zeros_like(frac))  # (B, T), 0 = take lo
    v = values.transpose(1, 2)  # (B, S, F)
    f = v.shape[-1]
    v_lo = v.gather(1, lo[..., None].expand(-1, -1, f))  # (B, T, F)
    v_hi = v.gather(1, hi[..., None].expand(-1, -1, f))  # (B, T, F)
    if mode == "nearest":
        take_hi = (frac > 0.5)[..., None]  # (B, T, 1); a tie goes to the earlier step
        return v_hi.where(take_hi, v_lo)
    w = frac.to(values.dtype)[..., None]  # (B, T, 1)
    return torch.lerp(v_lo, v_hi, w)


def spectrogram_to_grid(aligned: Tensor, height: int, width: int, mode: str = "broadcast") -> Tensor:
    """Lay per-frame audio vectors out on an image grid.

    ``"broadcast"`` makes each of the K values a constant channel over the H x W grid;
    ``"resize"`` stretches the K values along the image height (row 0 = the first value, e.g.
    the lowest mel band) by linear interpolation and repeats them along the width, giving one
    channel.

    Shape:
        - aligned: (B, T, K)
        - output: (B, T, K, H, W) for ``"broadcast"``, (B, T, 1, H, W) for ``"resize"``
    """
    owner = "spectrogram_to_grid"
    check_choice(mode, GRID_MODES, owner=owner, arg="mode")
    check_tensor(aligned, "B T K", owner=owner, arg="aligned", floating=None)
    for arg, size in (("height", height), ("width", width)):
        check_size(size, owner=owner, arg=arg)
    return _to_grid(aligned, height, width, mode)


def _to_grid(aligned: Tensor, height: int, width: int, mode: str) -> Tensor:
    """``spectrogram_to_grid`` without its checks, for callers that have checked the sizes.

    The sizes may then be symbolic or traced (the TorchScript-based ONNX exporter passes them as
    tensors, which ``check_size`` refuses).
    """
    b, t, k = aligned.shape
    if mode == "broadcast":
        return aligned[..., None, None].expand(b, t, k, height, width)
    col = aligned.reshape(b * t, 1, k, 1)  # (B*T, 1, K, 1): a K x 1 image per frame
    grid = F.interpolate(col, size=(height, width), mode="bilinear", align_corners=False)
    return grid.reshape(b, t, 1, height, width)  # (B, T, 1, H, W)


def time_order_violations(times: Tensor) -> Tensor:
    """(..., S-1) bool, True where a time is smaller than the one before it.

    Reads values: for eager validation, not for compiled graphs.
    """
    return times[..., 1:] < times[..., :-1]


def time_overlap(a: Tensor, b: Tensor) -> Tensor:
    """(B,) bool, True where the spans ``[a[i, 0], a[i, -1]]`` and ``[b[i, 0], b[i, -1]]``
    intersect. ``a`` (B, T) and ``b`` (B, S) sorted along time. Reads values."""
    owner = "time_overlap"
    n = check_tensor(a, "B T", owner=owner, arg="a", floating=None)
    m = check_tensor(b, "B S", owner=owner, arg="b", floating=None, B=n["B"])
    check_same_device({"a": a, "b": b}, owner=owner)
    if n["T"] == 0 or m["S"] == 0:
        raise ValueError(
            f"{owner}: expected at least one time in `a` and in `b`, got T={n['T']}, S={m['S']}."
        )
    return (a[:, 0] <= b[:, -1]) & (b[:, 0] <= a[:, -1])
