"""torch.distributed helpers: a differentiable all-gather for uneven batches, and the gathered
losses behind ``InfoNCELoss(gather=True)``, ``SupConLoss(gather=True)`` and
``SigLIPLoss(gather=True)``.

Gradient scaling of the gathered loss. Each rank computes the loss of its *own* anchors (its
rows of ``a`` against every rank's ``b``, and its rows of ``b`` against every rank's ``a``;
SigLIP has the first direction only) divided by the *global* number of anchors. So, over ranks:

- the losses sum to the single-process loss on the concatenated batch, and
- because :func:`all_gather_with_grad` sums the incoming gradients of every rank in its backward,
  each rank's embeddings receive exactly the single-process gradient of their rows, and the
  gradients of any parameter (the encoder's, the logit scale) sum over ranks to the
  single-process gradient (the SigLIP bias too).

``DistributedDataParallel`` (and FSDP) *average* gradients over ranks, which would divide the
single-process gradient by the world size (open_clip's local-loss convention differs by exactly
this factor). ``grad_reduction="mean"`` (``InfoNCELoss(gather=True, grad_reduction="mean")``)
corrects for it: every rank returns the loss of the whole global batch (one extra all-reduce of
a scalar), with a gradient ``world_size`` times its own share's, so that DDP's average is the
single-process gradient on the concatenated batch, for uneven per-rank batches too.

Before any data moves, the ranks exchange one small int64 header each (batch size, trailing
shape, dtype, whether gradients are wanted, and whether the rank's own input checks passed).
So a rank whose tensor disagrees with the others in trailing shape or dtype makes *every* rank
raise the same :class:`~mmfuse.errors.ShapeError`, listing what each rank sent, instead of a
crash inside the backend or a hang; a rank with an empty batch (B=0) still takes part and
contributes no rows, so uneven last batches work. A collective needs every rank: each rank must
make the same calls (and, once any rank's gathered tensor requires gradients, call
``backward`` too).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch import distributed as dist

from ._checks import check_batched, check_choice, check_tensor, format_shape, owner_name
from .errors import ShapeError
from .functional.contrastive import (
    REDUCTIONS,
    _siglip,
    _weighted_mean,
    info_nce_terms,
    make_pairs,
)
from .functional.contrastive._checks import (
    _check_pair_inputs,
    _check_positives,
    _check_weights,
    _Inputs,
    _tile_for,
)
from .functional.contrastive._common import _anchor_weights
from .functional.contrastive._negatives import _check_negatives, _info_nce_negatives
from .functional.contrastive._pairs import _Pairs
from .functional.contrastive._rows import _rows
from .functional.contrastive._siglip import _siglip_sums
from .functional.contrastive.supcon import (
    VARIANTS,
    _check_options,
    _flatten,
    _supcon,
    _supcon_terms,
)

__all__ = [
    "all_gather_with_grad",
    "gather_sizes",
    "info_nce_gathered",
    "is_distributed",
    "siglip_gathered",
    "supcon_gathered",
]

# every dtype torch defines, in a fixed order: its index is the dtype's code in the header
_DTYPES = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
_DIMS_IN_HEADER = 8  # trailing dims sent in the header; more take a second exchange
_DIRECTIONS = ("both", "a2b", "b2a")
_REDUCTIONS = ("sum", "mean")  # how the training loop reduces gradients over ranks


def is_distributed(group: Any = None) -> bool:
    """True when a process group is initialised and holds more than one rank."""
    return (
        dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    )


def gather_sizes(n: int, *, device: torch.device, group: Any = None) -> list[int]:
    """The first-dimension size of every rank, in rank order."""
    local = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, local, group=group)
    return [int(t.item()) for t in out]


def _exchange(values: list[int], *, device: torch.device, group: Any) -> list[list[int]]:
    """All-gather a list of ints of the same length on every rank."""
    local = torch.tensor(values, dtype=torch.int64, device=device)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, local, group=group)
    return [[int(v) for v in t.tolist()] for t in out]


def _backend_device(group: Any) -> torch.device:
    """Where the header lives when the rank has no tensor to take a device from."""
    if dist.get_backend(group) == "nccl":  # pragma: no cover - needs GPUs
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Sent(NamedTuple):
    """What one rank announced in the header."""

    dtype: torch.dtype
    grad: bool
    shape: tuple[int, ...]
    extra: tuple[int, ...]

    def text(self) -> str:
        return f"{format_shape(self.shape)} {str(self.dtype).removeprefix('torch.')}"


def _agree(x: object, *, group: Any, owner: object, arg: str, error: BaseException | None = None,
           extra: tuple[int, ...] = (), extra_text: Any = None) -> list[_Sent]:
    """Exchange the header of ``x`` with every rank and raise on every rank if they disagree.

    ``error`` is this rank's own input error (raised here after telling the other ranks, which
    raise too). ``extra`` are further ints every rank must agree on (``extra_text`` describes
    them for the message). Returns what every rank sent, in rank order.
    """
    ok = error is None and isinstance(x, Tensor) and x.dim() >= 1
    device = x.device if isinstance(x, Tensor) else _backend_device(group)
    if ok:
        assert isinstance(x, Tensor)
        code = _DTYPES.index(x.dtype)
        grad = int(x.requires_grad and torch.is_grad_enabled())
        shape = list(x.shape)
    else:
        code, grad, shape = -1, 0, [0]
    trailing = shape[1:_DIMS_IN_HEADER + 1]
    # header: failed, dtype code, wants grad, ndim, B, extra..., trailing dims (padded)
    head = [int(not ok), code, grad, len(shape), shape[0], *extra,
            *trailing, *[-1] * (_DIMS_IN_HEADER - len(trailing))]
    rows = _exchange(head, device=device, group=group)
    failed = [r for r, row in enumerate(rows) if row[0]]
    if failed:
        if error is not None:
            raise error
        if not ok:  # pragma: no cover - callers check x before
            check_batched(x, owner=owner, arg=arg)
        raise ShapeError(
            f"{owner_name(owner)}: rank {', '.join(map(str, failed))} failed its input checks "
            f"(see that rank's error), so no rank gathers `{arg}`."
        )
    k = len(extra)
    ndims = {row[3] for row in rows}
    if len(ndims) == 1 and next(iter(ndims)) - 1 > _DIMS_IN_HEADER:  # every rank sends more
        shapes = [tuple(r) for r in _exchange(shape, device=device, group=group)]
    else:
        shapes = [(row[4], *row[5 + k:][: row[3] - 1]) for row in rows]
    sent = [_Sent(_DTYPES[row[1]], bool(row[2]), shape_r, tuple(row[5:5 + k]))
            for row, shape_r in zip(rows, shapes)]
    if extra and len({s.extra for s in sent}) > 1:
        described = "; ".join(f"rank {r}: {extra_text(s.extra)}" for r, s in enumerate(sent))
        raise ValueError(
            f"{owner_name(owner)}: expected the same options on every rank, got {described}."
        )
    if len({(s.dtype, s.shape[1:]) for s in sent}) > 1:
        described = ", ".join(f"rank {r}: {s.text()}" for r, s in enumerate(sent))
        raise ShapeError(
            f"{owner_name(owner)}: expected `{arg}` with the same trailing shape and dtype on "
            f"every rank (all_gather_with_grad), got {described}."
        )
    return sent


def _gather_padded(x: Tensor, sizes: list[int], group: Any) -> Tensor:
    """All-gather along dim 0 for per-rank sizes ``sizes``: pad to the largest, gather, strip."""
    big = max(sizes)
    pad = x.new_zeros((big - x.shape[0], *x.shape[1:]))
    padded = torch.cat([x, pad]).contiguous()  # (max B, ...)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (sum B, ...)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int, group: Any) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)  # every rank's use of x
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_with_grad(x: Tensor, *, group: Any = None) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order, keeping gradients.

    Ranks may hold different batch sizes, an empty batch (B=0) included; the other dimensions
    and the dtype must agree. The ranks first exchange a small header (batch size, trailing
    shape, dtype), so a disagreement raises the same :class:`~mmfuse.errors.ShapeError` on
    every rank, naming what each sent. Then each pads to the largest batch, gathers, and strips
    the padding. In the backward, the gradients of all ranks with respect to the gathered tensor
    are summed and each rank receives the slice of its own shard, so a loss summed over ranks is
    differentiated exactly. When ``x`` requires gradients on any rank, the output requires them
    on every rank, and every rank must call ``backward`` (the backward is a collective too).
    Without an initialised process group (or with one rank) ``x`` is returned unchanged.

    Bool and integer tensors are gathered without gradient.

    Shape:
        - x: (B_r, *) on rank r
        - output: (sum_r B_r, *)
    """
    return _gather(x, group=group, owner="all_gather_with_grad", arg="x")[0]


def _gather(x: Tensor, *, group: Any, owner: object, arg: str, error: BaseException | None = None,
            extra: tuple[int, ...] = (), extra_text: Any = None) -> tuple[Tensor, list[int]]:
    """:func:`all_gather_with_grad` naming ``owner`` and ``arg``; also returns every rank's
    batch size. ``error``: this rank's own input error, raised after telling the others."""
    distributed = is_distributed(group)
    if error is None:
        try:
            check_batched(x, owner=owner, arg=arg)
        except (TypeError, ValueError) as exc:
            if not distributed:
                raise
            error = exc
    if not distributed:
        if error is not None:
            raise error
        return x, [x.shape[0]]
    sent = _agree(x, group=group, owner=owner, arg=arg, error=error, extra=extra,
                  extra_text=extra_text)
    sizes = [s.shape[0] for s in sent]
    if max(sizes) == 0:
        return x, sizes
    if x.dtype == torch.bool:
        return _gather_padded(x.to(torch.uint8), sizes, group).bool(), sizes
    if not (x.is_floating_point() and any(s.grad for s in sent)):
        return _gather_padded(x, sizes, group), sizes
    if not (x.requires_grad and torch.is_grad_enabled()):
        # another rank wants gradients: this rank must join the backward's all-reduce, so its
        # output requires gradients too (they reach a leaf that nothing reads)
        x = x.detach().requires_grad_()
    out: Tensor = _AllGather.apply(x, sizes, dist.get_rank(group), group)
    return out, sizes


_WEIGHTS_TEXT = ("None", "a float tensor", "a bool tensor")  # by _weights_code


def _describe_reduction(code: int) -> str:
    """``grad_reduction`` as an option summary names it: only where it is not the default."""
    if not code:
        return ""
    r = _REDUCTIONS[code] if 0 <= code < len(_REDUCTIONS) else "invalid"
    return f", grad_reduction {r!r}"


def _describe_options(extra: tuple[int, ...]) -> str:
    positives, weights, direction, negatives, reduction = extra
    w = _WEIGHTS_TEXT[weights]
    d = _DIRECTIONS[direction] if 0 <= direction < len(_DIRECTIONS) else "invalid"
    neg = ("None", "(M, D)", "(B, M, D)")[negatives]
    text = (f"positives {'given' if positives else 'None'}, weights {w}, direction {d!r}, "
            f"negatives {neg}")
    return text + _describe_reduction(reduction)


def _weights_code(weights: object) -> int:
    return 0 if weights is None else 2 if getattr(weights, "dtype", None) == torch.bool else 1


def _check_inputs(a: object, b: object, positives: object, weights: object, direction: object,
                  *, owner: object, allow_empty: bool) -> _Inputs:
    """The local checks of :func:`info_nce_gathered`; an empty batch passes when gathering."""
    check_choice(direction, _DIRECTIONS, owner=owner, arg="direction")
    if isinstance(positives, Tensor) and positives.dim() != 1:
        raise ValueError(
            f"{owner_name(owner)}: expected `positives` as (B,) group ids when gathering across "
            f"ranks, got a matrix of shape {tuple(positives.shape)}."
        )
    if allow_empty and isinstance(a, Tensor) and a.dim() == 2 and a.shape[0] == 0:
        dims = check_tensor(a, "B D", owner=owner, arg="a")
        check_tensor(b, "B D", owner=owner, arg="b", B=0, D=dims["D"])
        assert isinstance(b, Tensor)
        if a.device != b.device:
            raise ValueError(f"{owner_name(owner)}: expected `b` on {a.device} like `a`, got {b.device}.")
        return _Inputs(_check_positives(positives, 0, 0, owner=owner),
                       *_check_weights(weights, 0, owner=owner))
    return _check_pair_inputs(a, b, positives, weights, owner=owner)


def info_nce_gathered(
    a: Tensor,
    b: Tensor,
    scale: Tensor,
    *,
    normalize: bool = True,
    positives: Tensor | None = None,
    weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    direction: str = "both",
    chunk_size: int | str | None = "auto",
    owner: object = "info_nce_gathered",
    group: Any = None,
    negatives: Tensor | None = None,
    reduction: str = "anchor",
    grad_reduction: str = "sum",
) -> Tensor:
    """This rank's share of the InfoNCE loss of the batch gathered from every rank.

    Local rows of ``a`` are anchors against all ranks' ``b`` (and local ``b`` against all
    ``a``); the sum is divided by the global number of anchors, so the returned values sum over
    ranks to ``info_nce`` on the concatenated batch (see the module docstring for gradients).
    ``positives`` may be None (pairs by row) or (B,) group ids, gathered with the embeddings;
    ``weights`` are gathered too. Without a process group this is :func:`info_nce`.

    A rank may hold an empty batch (B=0): it takes part in every collective and its share is
    0, so uneven last batches work; at least one rank must hold a row. Every rank must pass
    ``positives`` and ``weights`` alike (all or none) and the same ``direction``. When one
    rank's inputs fail their checks, or disagree with the other ranks' in trailing shape or
    dtype, every rank raises (the failing rank its own error), and none hangs.

    Explicit ``negatives`` (see :func:`~mmfuse.functional.info_nce`): shared (M_r, D)
    negatives are gathered from every rank (every query meets the union), per-sample
    (B_r, M, D) negatives stay with their queries; the shares sum to the single-process loss
    with the concatenated queries and negatives. ``reduction`` as in ``info_nce``.

    ``grad_reduction="mean"`` is for a loop that *averages* gradients over ranks
    (``DistributedDataParallel``, FSDP): every rank returns the loss of the whole global batch,
    and the gradient of that value is ``world_size`` times the gradient of the rank's share,
    so that the averaged gradient of every parameter is the single-process one. Every rank must
    pass the same ``grad_reduction``.

    Shape:
        - a, b: (B_r, D) on rank r; positives, weights: (B_r,)
        - output: () scalar
    """
    distributed = is_distributed(group)
    error: BaseException | None = None
    inp: _Inputs | None = None
    try:
        check_choice(reduction, REDUCTIONS, owner=owner, arg="reduction")
        check_choice(grad_reduction, _REDUCTIONS, owner=owner, arg="grad_reduction")
        inp = _check_inputs(a, b, positives, weights, direction, owner=owner,
                            allow_empty=distributed)
        if negatives is not None:
            _check_negatives(negatives, a, positives, direction, owner=owner)
    except (TypeError, ValueError) as exc:
        if not distributed:
            raise
        error = exc
    if distributed:
        options = (
            int(positives is not None),
            _weights_code(weights),
            _DIRECTIONS.index(direction) if direction in _DIRECTIONS else -1,
            0 if not isinstance(negatives, Tensor) else 1 if negatives.dim() == 2 else 2,
            _REDUCTIONS.index(grad_reduction) if grad_reduction in _REDUCTIONS else -1,
        )
        a_all, sizes = _gather(a, group=group, owner=owner, arg="a", error=error, extra=options,
                               extra_text=_describe_options)
        b_all = _gather(b, group=group, owner=owner, arg="b")[0]
        rank = dist.get_rank(group)
    else:
        a_all, b_all, sizes, rank = a, b, [a.shape[0]], 0
    assert inp is not None  # an error was raised on every rank above
    _check_rows(sum(sizes), owner, "`a` and `b`", "B")
    if negatives is not None:
        loss = _negatives_share(a, b, negatives, scale, inp, normalize=normalize,
                                label_smoothing=label_smoothing, chunk_size=chunk_size,
                                owner=owner, group=group)
    else:
        loss = _pairs_share(a, b, a_all, b_all, scale, inp, positives, sizes, rank,
                            normalize=normalize, label_smoothing=label_smoothing,
                            direction=direction, chunk_size=chunk_size, reduction=reduction,
                            owner=owner, group=group)
    if distributed and grad_reduction == "mean":
        loss = _as_global_loss(loss, group)
    return loss.to(torch.promote_types(torch.promote_types(a.dtype, b.dtype), scale.dtype))


def _as_global_loss(loss: Tensor, group: Any) -> Tensor:
    """For loops that average gradients over ranks (DDP): the value is the global loss (the
    shares' sum) and the gradient world_size x the share's, which the average turns into the
    single-process gradient."""
    world = dist.get_world_size(group)
    total_loss = loss.detach().clone()
    dist.all_reduce(total_loss, op=dist.ReduceOp.SUM, group=group)
    scaled = loss * world
    return scaled + (total_loss - scaled).detach()


def _check_rows(total: int, owner: object, what: str, letter: str) -> None:
    """Raise on every rank when the global batch is empty (no rank has a row)."""
    if total == 0:
        raise ValueError(f"{owner_name(owner)}: expected at least one row of {what} across the "
                         f"ranks, got {letter}=0 on every rank.")


def _global_pairs(n: int, offset: int, total: int, positives: Tensor | None, inp: _Inputs, *,
                  group: Any, owner: object) -> tuple[_Pairs, Tensor | None]:
    """(this rank's rows against the global batch's pairs, the global kept-key mask): pairs by
    global row (this rank's rows start at ``offset``) or by gathered group ids; the weights
    gathered into a mask of kept keys (None: every key kept)."""
    if positives is not None:
        groups_k = _gather(positives, group=group, owner=owner, arg="positives")[0]
        pairs = make_pairs(n, total, groups_q=positives, groups_k=groups_k)
    else:
        pairs = make_pairs(n, total, offset=offset)
    w_all = None if inp.weights is None else _gather(inp.weights.detach(), group=group,
                                                     owner=owner, arg="weights")[0]
    v_all = None if w_all is None else (w_all if w_all.dtype == torch.bool else w_all != 0)
    return pairs, v_all


def _pairs_share(a: Tensor, b: Tensor, a_all: Tensor, b_all: Tensor, scale: Tensor,
                 inp: _Inputs, positives: Tensor | None, sizes: list[int], rank: int, *,
                 normalize: bool, label_smoothing: float, direction: str,
                 chunk_size: int | str | None, reduction: str, owner: object,
                 group: Any) -> Tensor:
    """This rank's share of InfoNCE with pairs by row or by group id."""
    n, offset, total = sizes[rank], sum(sizes[:rank]), sum(sizes)
    pairs, v_all = _global_pairs(n, offset, total, positives, inp, group=group, owner=owner)
    tile = _tile_for(chunk_size, a, total, owner=owner)
    parts = []
    for on, q, k_all in (("a2b", a, b_all), ("b2a", b, a_all)):
        if direction not in ("both", on):
            continue
        t = info_nce_terms(q, k_all, scale, pairs, q_valid=inp.valid, k_valid=v_all,
                           label_smoothing=label_smoothing, rows=True, cols=False,
                           normalize=normalize, tile=tile)
        num, den = _weighted_mean(t.rows, t.row_positives, inp.weights, reduction)
        parts.append(_global_mean(num, den, group))
    return parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2


def _global_mean(num: Tensor, den: Tensor, group: Any) -> Tensor:
    """This rank's numerator over the denominator summed over every rank (not differentiated)."""
    den = den.detach().clone()
    if is_distributed(group):
        dist.all_reduce(den, op=dist.ReduceOp.SUM, group=group)
    return num / den.clamp_min(torch.finfo(num.dtype).tiny)


def _negatives_share(a: Tensor, b: Tensor, negatives: Tensor, scale: Tensor, inp: _Inputs, *,
                     normalize: bool, label_smoothing: float, chunk_size: int | str | None,
                     owner: object, group: Any) -> Tensor:
    """This rank's share of InfoNCE against explicit negatives (shared ones gathered)."""
    neg = negatives
    if negatives.dim() == 2:
        neg = _gather(negatives, group=group, owner=owner, arg="negatives")[0]
    tile = _tile_for(chunk_size, a, neg.shape[0], owner=owner) \
        if neg.dim() == 2 else None
    per = _info_nce_negatives(a, b, neg, scale, valid=inp.valid, normalize=normalize,
                              eps=float(label_smoothing), tile=tile)
    num, den = _weighted_mean(per, torch.ones_like(per), inp.weights)
    loss = _global_mean(num, den, group)
    out = torch.promote_types(torch.promote_types(a.dtype, b.dtype), neg.dtype)
    return loss.to(torch.promote_types(out, scale.dtype))


def _describe_supcon(extra: tuple[int, ...]) -> str:
    labels, weights, variant, views, reduction = extra
    w = _WEIGHTS_TEXT[weights]
    v = VARIANTS[variant] if 0 <= variant < len(VARIANTS) else "invalid"
    layout = "(N, D)" if views == 0 else f"(B, {views}, D)"
    text = (f"labels {'given' if labels else 'None'}, weights {w}, variant {v!r}, "
            f"features {layout}")
    return text + _describe_reduction(reduction)


def supcon_gathered(
    features: Tensor,
    labels: Tensor | None,
    scale: Tensor,
    *,
    variant: str = "out",
    normalize: bool = True,
    weights: Tensor | None = None,
    reduction: str = "anchor",
    chunk_size: int | str | None = "auto",
    owner: object = "supcon_gathered",
    group: Any = None,
    grad_reduction: str = "sum",
) -> Tensor:
    """This rank's share of the supervised contrastive loss of the batch gathered from every
    rank (:func:`~mmfuse.functional.supcon_loss`; ``SupConLoss(gather=True)``).

    The local embeddings are anchors against every rank's embeddings (their own rows
    excluded); the sum is divided by the global number (weight) of anchors with a positive,
    so the shares sum over ranks to ``supcon_loss`` on the concatenated batch, and so do the
    gradients (as for :func:`info_nce_gathered`). Without labels, the views of a sample are its
    positives, across ranks too. Ranks may hold uneven or empty batches; every rank must pass
    ``labels`` and ``weights`` alike, the same ``variant`` and the same number of views.
    ``grad_reduction="mean"``: every rank returns the global loss, with gradients that DDP's
    averaging turns into the single-process ones (as for :func:`info_nce_gathered`).

    Shape:
        - features: (N_r, D) with labels (N_r,), or (B_r, V, D) with labels (B_r,) or None
        - output: () scalar
    """
    distributed = is_distributed(group)
    error: BaseException | None = None
    flat = None
    try:
        _check_options(variant, reduction, owner=owner)
        check_choice(grad_reduction, _REDUCTIONS, owner=owner, arg="grad_reduction")
        flat = _flatten(features, labels, weights, owner=owner, allow_empty=distributed)
    except (TypeError, ValueError) as exc:
        if not distributed:
            raise
        error = exc
    if not distributed:
        return _supcon(features, labels, scale, variant=variant, normalize=normalize,
                       weights=weights, reduction=reduction, chunk_size=chunk_size, owner=owner)
    options = (int(labels is not None), _weights_code(weights),
               VARIANTS.index(variant) if variant in VARIANTS else -1,
               flat.views if flat is not None and features.dim() == 3 else 0,
               _REDUCTIONS.index(grad_reduction) if grad_reduction in _REDUCTIONS else -1)
    z_all, sizes = _gather(features if flat is None else flat.z, group=group, owner=owner,
                           arg="features", error=error, extra=options,
                           extra_text=_describe_supcon)
    assert flat is not None  # an error was raised on every rank above
    rank = dist.get_rank(group)
    n, offset, total = sizes[rank], sum(sizes[:rank]), sum(sizes)
    _check_rows(total, owner, "`features`", "N")
    ids = flat.ids if labels is not None else flat.ids + offset // flat.views
    ids_all = _gather(ids, group=group, owner=owner, arg="labels")[0]
    w_all = None if flat.weights is None else _gather(flat.weights.detach(), group=group,
                                                      owner=owner, arg="weights")[0]
    v_all = None if w_all is None else (w_all if w_all.dtype == torch.bool else w_all != 0)
    st = _rows(flat.z, z_all, scale, pairs=make_pairs(n, total, groups_q=ids, groups_k=ids_all),
               self_offset=offset, vq=flat.valid, vk=v_all, normalize=normalize,
               lse_p=variant == "in", tile=_tile_for(chunk_size, flat.z, total, owner=owner))
    term = _supcon_terms(st, variant)
    w = _anchor_weights(st.n_pos, flat.weights, reduction)
    loss = _global_mean((w * term).sum(), w.sum(), group)
    if grad_reduction == "mean":
        loss = _as_global_loss(loss, group)
    return loss.to(torch.promote_types(features.dtype, scale.dtype))


def _describe_siglip(extra: tuple[int, ...]) -> str:
    positives, weights, reduction = extra
    w = _WEIGHTS_TEXT[weights]
    text = f"positives {'given' if positives else 'None'}, weights {w}"
    return text + _describe_reduction(reduction)


def siglip_gathered(
    a: Tensor,
    b: Tensor,
    scale: Tensor,
    bias: Tensor,
    *,
    normalize: bool = True,
    positives: Tensor | None = None,
    weights: Tensor | None = None,
    chunk_size: int | str | None = "auto",
    owner: object = "siglip_gathered",
    group: Any = None,
    grad_reduction: str = "sum",
) -> Tensor:
    """This rank's share of the SigLIP loss of the batch gathered from every rank
    (:func:`~mmfuse.functional.siglip_loss`; ``SigLIPLoss(gather=True)``).

    Only ``b`` is gathered: the local rows of ``a`` are the queries, scored against the keys
    ``b`` of every rank (positives: the matching rows of the global batch, or equal group ids
    across ranks). The sum of their pair terms is divided by the global number (weight) of
    queries, as ``siglip_loss`` divides by the batch size, so the shares sum over ranks to
    ``siglip_loss`` on the concatenated batch, and so do the gradients of the embeddings, the
    scale and the bias (as for :func:`info_nce_gathered`). Above 1024 global rows (or with an
    int ``chunk_size``) the local (B_r, sum B) block runs tiled, in memory O(B_r * tile).

    ``positives`` may be None or (B_r,) group ids (gathered with the keys); a (B, B) matrix
    raises, as a rank does not know the other ranks' columns. ``weights`` are gathered too (a
    zero weight removes the sample as a query and as a key on every rank). Ranks may hold
    uneven or empty batches; every rank must pass ``positives`` and ``weights`` alike and the
    same ``grad_reduction``, else every rank raises. ``grad_reduction="mean"``: every rank
    returns the global loss, with gradients that DDP's averaging turns into the single-process
    ones. Without a process group this is ``siglip_loss`` (any ``positives``).

    Shape:
        - a, b: (B_r, D) on rank r; positives, weights: (B_r,)
        - scale, bias: () tensors
        - output: () scalar
    """
    distributed = is_distributed(group)
    error: BaseException | None = None
    inp: _Inputs | None = None
    try:
        check_choice(grad_reduction, _REDUCTIONS, owner=owner, arg="grad_reduction")
        if distributed:
            inp = _check_inputs(a, b, positives, weights, "both", owner=owner, allow_empty=True)
    except (TypeError, ValueError) as exc:
        if not distributed:
            raise
        error = exc
    if not distributed:
        return _siglip(a, b, scale, bias, normalize=normalize, positives=positives,
                       weights=weights, chunk_size=chunk_size, owner=owner)
    options = (int(positives is not None), _weights_code(weights),
               _REDUCTIONS.index(grad_reduction) if grad_reduction in _REDUCTIONS else -1)
    b_all, sizes = _gather(b, group=group, owner=owner, arg="b", error=error, extra=options,
                           extra_text=_describe_siglip)
    assert inp is not None  # an error was raised on every rank above
    rank = dist.get_rank(group)
    n, offset, total = sizes[rank], sum(sizes[:rank]), sum(sizes)
    _check_rows(total, owner, "`a` and `b`", "B")
    pairs, v_all = _global_pairs(n, offset, total, positives, inp, group=group, owner=owner)
    num, den = _siglip_sums(a, b_all, scale, bias, pairs=pairs, vq=inp.valid, vk=v_all,
                            tile=_tile_for(chunk_size, a, total, owner=owner) if n else None,
                            normalize=normalize, weights=inp.weights)
    loss = _global_mean(num, den, group)
    if grad_reduction == "mean":
        loss = _as_global_loss(loss, group)
    out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype),
                                    torch.promote_types(scale.dtype, bias.dtype))
    return loss.to(out_dtype)
