"""Modality-consistent augmentation: what is drawn once is applied to every modality.

Augmenting each modality on its own breaks the pairing a multimodal model learns from (a mixup
with another partner per modality mixes two different samples' pairs; a shift of the audio
alone misaligns it with the video). Here the random draws are made once per batch (or per
sample) and applied to every modality, the labels, the presence and the masks alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import (
    check_batched,
    check_positive,
    check_size,
    check_tensor,
    format_shape,
)
from ...errors import ModalityError, ShapeError

__all__ = ["PairedMixup", "TimeJitter", "paired_mixup", "time_jitter"]


class PairedMixup(NamedTuple):
    """What :func:`paired_mixup` returns.

    Attributes:
        inputs: Mixed modalities, ``lam * x + (1 - lam) * x[perm]`` each.
        labels: (B, C) mixed soft labels.
        lam: (B,) mixing weight of each sample (all equal unless ``per_sample``), in the
            labels' dtype.
        perm: (B,) index of each sample's partner.
        present: Presence after mixing (True where both partners observed the modality), or
            None when none was given.
        masks: Token masks after mixing (True where either partner's token is valid), or None.
    """

    inputs: dict[str, Tensor]
    labels: Tensor
    lam: Tensor
    perm: Tensor
    present: dict[str, Tensor] | None
    masks: dict[str, Tensor] | None


def _beta(alpha: float, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Beta(alpha, alpha) draws, reproducible from ``generator`` (torch's Beta sampler takes
    none: it runs on a forked global generator seeded from ``generator``)."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = torch.full(shape, float(alpha), dtype=torch.float64)
        return torch.distributions.Beta(a, a).sample()


def _check_modalities(inputs: object, *, owner: str, arg: str) -> int:
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError(
            f"{owner}: expected `{arg}` to be a non-empty mapping from modality name to (B, ...) "
            f"tensor, got {inputs!r}."
        )
    first = next(iter(inputs))
    batch = check_batched(inputs[first], owner=owner, arg=f"{arg}[{first!r}]")
    for m, x in inputs.items():
        check_batched(x, owner=owner, arg=f"{arg}[{m!r}]")
        if x.shape[0] != batch:
            raise ShapeError(
                f"{owner}: batch sizes disagree in `{arg}`: expected `{arg}[{m!r}]` of shape "
                f"(B, ...) with B={batch} like `{arg}[{first!r}]`, got {format_shape(x.shape)}."
            )
    return batch


def _check_names(given: Mapping[str, object] | None, names: Mapping[str, object], *,
                 owner: str, arg: str) -> None:
    if given is not None:
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ModalityError(
                f"{owner}: unknown modality {sorted(unknown)} in `{arg}`; expected names from "
                f"{list(names)}, got {list(given)}."
            )


def paired_mixup(
    inputs: Mapping[str, Tensor],
    labels: Tensor,
    *,
    alpha: float = 0.2,
    num_classes: int | None = None,
    per_sample: bool = False,
    present: Mapping[str, Tensor] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> PairedMixup:
    """Mixup (Zhang et al., 2018) with one ``lambda`` and one permutation for every modality
    and the labels.

    ``lam ~ Beta(alpha, alpha)`` (one per batch, or one per sample with ``per_sample``) and a
    random permutation ``perm`` are drawn once; every modality becomes
    ``lam * x + (1 - lam) * x[perm]`` and the labels ``lam * y + (1 - lam) * y[perm]`` (class
    indices are one-hot encoded first). A mixed sample observes a modality only if both
    partners did (``present & present[perm]``; its values are then not to be read). Token
    masks (True = valid) become the union of the partners' (``mask | mask[perm]``), masked
    values counting as zero in the mix.

    Args:
        inputs: Modality tensors, (B, ...) each (floating).
        labels: (B,) class indices (with ``num_classes``) or (B, C) soft labels.
        alpha: Beta concentration; small values keep most samples near one partner.
        num_classes: Number of classes C for index labels (None: ``labels`` are (B, C)).
        per_sample: One ``lam`` per sample instead of one per batch.
        present: Optional (B,) bool presence per modality.
        masks: Optional token masks, (B, N) bool per modality, covering the leading dims of
            the modality's (B, N, ...) tensor.
        generator: Source of the random draws (CPU), for reproducible mixing.

    Shape:
        - inputs[m]: (B, ...); labels: (B,) long or (B, C)
        - output: a :class:`PairedMixup` (inputs like the given, labels (B, C), lam and perm (B,))

    Example:
        >>> x = {"image": torch.randn(4, 3), "audio": torch.randn(4, 5)}
        >>> out = paired_mixup(x, torch.tensor([0, 1, 2, 1]), num_classes=3,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> out.labels.shape, bool(torch.allclose(out.labels.sum(1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """
    owner = "paired_mixup"
    batch = _check_modalities(inputs, owner=owner, arg="inputs")
    check_positive(alpha, owner=owner, arg="alpha")
    for m, x in inputs.items():
        if not x.is_floating_point():
            raise TypeError(
                f"{owner}: expected `inputs[{m!r}]` to be a floating-point tensor, got {x.dtype}."
            )
    if labels.dim() == 1 and not labels.is_floating_point():
        if num_classes is None:
            raise ValueError(
                f"{owner}: expected `num_classes` with (B,) class-index labels, got None."
            )
        check_size(num_classes, owner=owner, arg="num_classes")
        check_tensor(labels, "B", owner=owner, arg="labels", floating=None, B=batch)
        soft = F.one_hot(labels, num_classes).to(next(iter(inputs.values())).dtype)
    else:
        check_tensor(labels, "B C", owner=owner, arg="labels", B=batch)
        soft = labels
    _check_names(present, inputs, owner=owner, arg="present")
    _check_names(masks, inputs, owner=owner, arg="masks")
    for m, p in (present or {}).items():
        check_tensor(p, "B", owner=owner, arg=f"present[{m!r}]", floating=False, B=batch)
    for m, mask in (masks or {}).items():
        x = inputs[m]
        if mask.dtype != torch.bool or mask.dim() < 2 or mask.shape != x.shape[: mask.dim()]:
            raise ShapeError(
                f"{owner}: expected `masks[{m!r}]` to be a bool tensor covering the leading "
                f"dims of `inputs[{m!r}]` {format_shape(x.shape)}, e.g. (B, N), got "
                f"{mask.dtype} {format_shape(mask.shape)}."
            )

    perm = torch.randperm(batch, generator=generator)
    lam = _beta(alpha, (batch,) if per_sample else (1,), generator).expand(batch)
    device = next(iter(inputs.values())).device
    perm, lam = perm.to(device), lam.to(device)

    def mix(x: Tensor) -> Tensor:
        w = lam.to(x.dtype).reshape((batch,) + (1,) * (x.dim() - 1))  # (B, 1, ..., 1)
        return w * x + (1 - w) * x[perm]

    out: dict[str, Tensor] = {}
    new_masks: dict[str, Tensor] | None = None if masks is None else {}
    for m, x in inputs.items():
        if masks is not None and m in masks:
            keep = masks[m].reshape(masks[m].shape + (1,) * (x.dim() - masks[m].dim()))
            x = x.where(keep, 0.0)
            new_masks[m] = masks[m] | masks[m][perm]  # type: ignore[index]
        out[m] = mix(x)
    new_present = None if present is None else {m: p & p[perm] for m, p in present.items()}
    return PairedMixup(out, mix(soft), lam.to(soft.dtype), perm, new_present, new_masks)


class TimeJitter(NamedTuple):
    """What :func:`time_jitter` returns.

    Attributes:
        streams: Each stream resampled on its own timestamps after the warp.
        masks: (B, T_m) bool per stream: True where the resampled step is valid (inside the
            warped clip and read from valid steps).
        shift: (B,) shift in seconds of each sample.
        stretch: (B,) stretch factor of each sample.
    """

    streams: dict[str, Tensor]
    masks: dict[str, Tensor]
    shift: Tensor
    stretch: Tensor


def time_jitter(
    streams: Mapping[str, Tensor],
    times: Mapping[str, Tensor],
    *,
    max_shift: float = 0.0,
    max_stretch: float = 0.0,
    masks: Mapping[str, Tensor] | None = None,
    time_dims: Mapping[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> TimeJitter:
    """Warp every time-aligned stream by the same random shift and stretch.

    Per sample, ``shift ~ U(-max_shift, max_shift)`` seconds and
    ``stretch ~ U(1 - max_stretch, 1 + max_stretch)`` are drawn once; the content at time
    ``tau`` of the shared clock moves to ``stretch * tau + shift`` in *every* stream, so
    streams aligned before stay aligned. Each stream is resampled (linear interpolation) on its
    own timestamps, which do not change: step ``t`` reads the original at
    ``(t - shift) / stretch``. A step that maps outside the stream's original time span, or
    onto a masked step, is masked (False) and set to zero.

    Args:
        streams: (B, ..., T_m, ...) tensors, time on ``time_dims[m]`` (default dim 1).
        times: Increasing timestamps in seconds per stream, (T_m,) or (B, T_m).
        max_shift: Largest shift, seconds.
        max_stretch: Largest relative stretch, in [0, 1).
        masks: Optional (B, T_m) bool per stream, True = valid step.
        time_dims: Time dimension per stream (e.g. 2 for a (B, F, S) spectrogram).
        generator: Source of the random draws (CPU), for reproducible jitter.

    Shape:
        - streams[m]: (B, ..., T_m, ...); times[m]: (T_m,) or (B, T_m); masks[m]: (B, T_m)
        - output: a :class:`TimeJitter`: streams like the given, masks (B, T_m), shift and
          stretch (B,)

    Example:
        >>> t = torch.arange(5.0)
        >>> out = time_jitter({"a": t.expand(1, 5)}, {"a": t}, max_shift=1.0,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(out.streams["a"][out.masks["a"]],
        ...                     (t - out.shift)[out.masks["a"][0]]))
        True
    """
    owner = "time_jitter"
    batch = _check_modalities(streams, owner=owner, arg="streams")
    check_positive(max_shift, owner=owner, arg="max_shift", allow_zero=True)
    if not isinstance(max_stretch, (int, float)) or isinstance(max_stretch, bool) or not (
        0 <= max_stretch < 1
    ):
        raise ValueError(f"{owner}: expected `max_stretch` in [0, 1), got {max_stretch!r}.")
    _check_names(masks, streams, owner=owner, arg="masks")
    _check_names(time_dims, streams, owner=owner, arg="time_dims")
    if not isinstance(times, Mapping) or set(times) != set(streams):
        got = list(times) if isinstance(times, Mapping) else type(times).__name__
        raise ModalityError(
            f"{owner}: expected `times` to name exactly the streams {list(streams)}, got {got}."
        )
    ref = next(iter(streams.values()))
    u = torch.rand(2, batch, generator=generator, dtype=torch.float64)
    shift = ((2 * u[0] - 1) * max_shift).to(ref.device)
    stretch = (1 + (2 * u[1] - 1) * max_stretch).to(ref.device)
    out, new_masks = {}, {}
    for m, x in streams.items():
        dim = (time_dims or {}).get(m, 1)
        if not -x.dim() < dim < x.dim() or dim % x.dim() == 0:
            raise ShapeError(
                f"{owner}: expected `time_dims[{m!r}]` to name a non-batch dim of `streams[{m!r}]`"
                f" {format_shape(x.shape)}, got {dim}."
            )
        xt = x.movedim(dim, 1)  # (B, T, ...)
        steps = xt.shape[1]
        t = times[m]
        if t.dim() == 1:
            check_tensor(t, "T", owner=owner, arg=f"times[{m!r}]", T=steps)
            t = t.expand(batch, steps)
        else:
            check_tensor(t, "B T", owner=owner, arg=f"times[{m!r}]", B=batch, T=steps)
        mask = None if masks is None or m not in masks else masks[m]
        if mask is not None:
            check_tensor(mask, "B T", owner=owner, arg=f"masks[{m!r}]", floating=False, B=batch,
                         T=steps)
        y, valid = _resample(xt, t.to(torch.float64), mask, shift, stretch)
        out[m] = y.movedim(1, dim)
        new_masks[m] = valid
    return TimeJitter(out, new_masks, shift.to(ref.dtype), stretch.to(ref.dtype))


def _resample(x: Tensor, t: Tensor, mask: Tensor | None, shift: Tensor,
              stretch: Tensor) -> tuple[Tensor, Tensor]:
    """x (B, T, ...) on times t (B, T) read at ``(t - shift) / stretch`` by linear
    interpolation; returns the values (zero where invalid) and the (B, T) validity."""
    steps = x.shape[1]
    src = (t - shift[:, None].double()) / stretch[:, None].double()  # (B, T)
    inside = (src >= t[:, :1]) & (src <= t[:, -1:])  # (B, T)
    if steps == 1:
        valid = inside if mask is None else inside & mask
        return x.where(_expand(valid, x), 0.0), valid
    hi = torch.searchsorted(t.contiguous(), src.contiguous()).clamp(1, steps - 1)  # (B, T)
    lo = hi - 1
    t_lo, t_hi = t.gather(1, lo), t.gather(1, hi)
    w = ((src - t_lo) / (t_hi - t_lo)).clamp(0, 1)  # (B, T), weight of the upper step
    if mask is not None:
        x = x.where(_expand(mask, x), 0.0)
        valid = inside & (mask.gather(1, lo) | (w == 1)) & (mask.gather(1, hi) | (w == 0))
    else:
        valid = inside
    x_lo = x.gather(1, _expand(lo, x).expand(x.shape))
    x_hi = x.gather(1, _expand(hi, x).expand(x.shape))
    wx = _expand(w, x).to(x.dtype)
    y = (1 - wx) * x_lo + wx * x_hi
    return y.where(_expand(valid, x), 0.0), valid


def _expand(a: Tensor, like: Tensor) -> Tensor:
    """(B, T) -> (B, T, 1, ..., 1) to broadcast against ``like`` (B, T, ...)."""
    return a.reshape(a.shape + (1,) * (like.dim() - 2))
