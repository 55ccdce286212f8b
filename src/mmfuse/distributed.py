"""torch.distributed helpers: a differentiable all-gather for uneven batches, and the gathered
InfoNCE loss behind ``InfoNCELoss(gather=True)``.

Gradient scaling of the gathered loss. Each rank computes the loss of its *own* anchors (its
rows of ``a`` against every rank's ``b``, and its rows of ``b`` against every rank's ``a``)
divided by the *global* number of anchors. So, over ranks:

- the losses sum to the single-process loss on the concatenated batch, and
- because :func:`all_gather_with_grad` sums the incoming gradients of every rank in its backward,
  each rank's embeddings receive exactly the single-process gradient of their rows, and the
  gradients of any parameter (the encoder's, the logit scale) sum over ranks to the
  single-process gradient.

``DistributedDataParallel`` *averages* gradients over ranks; to train with the single-process
gradient under DDP, multiply the loss by ``world_size`` (open_clip's local-loss convention
differs by exactly this factor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from ._checks import check_batched, check_choice, owner_name
from .functional._contrastive_checks import _check_pair_inputs, _tile_size
from .functional.contrastive import _weighted_mean, info_nce_terms, make_pairs

__all__ = ["all_gather_with_grad", "gather_sizes", "info_nce_gathered", "is_distributed"]


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

    Ranks may hold different batch sizes (the other dimensions must agree): each pads to the
    largest, gathers, and strips the padding. In the backward, the gradients of all ranks with
    respect to the gathered tensor are summed and each rank receives the slice of its own
    shard, so a loss summed over ranks is differentiated exactly. Without an initialised
    process group (or with one rank) ``x`` is returned unchanged.

    Bool tensors are gathered without gradient.

    Shape:
        - x: (B_r, *) on rank r
        - output: (sum_r B_r, *)
    """
    check_batched(x, owner="all_gather_with_grad", arg="x")
    if not is_distributed(group):
        return x
    sizes = gather_sizes(x.shape[0], device=x.device, group=group)
    if x.dtype == torch.bool:
        return _gather_padded(x.to(torch.uint8), sizes, group).bool()
    if not (x.is_floating_point() and x.requires_grad):
        return _gather_padded(x, sizes, group)
    out: Tensor = _AllGather.apply(x, sizes, dist.get_rank(group), group)
    return out


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
) -> Tensor:
    """This rank's share of the InfoNCE loss of the batch gathered from every rank.

    Local rows of ``a`` are anchors against all ranks' ``b`` (and local ``b`` against all
    ``a``); the sum is divided by the global number of anchors, so the returned values sum over
    ranks to ``info_nce`` on the concatenated batch (see the module docstring for gradients).
    ``positives`` may be None (pairs by row) or (B,) group ids, gathered with the embeddings;
    ``weights`` are gathered too. Without a process group this is :func:`info_nce`.

    Shape:
        - a, b: (B_r, D) on rank r; positives, weights: (B_r,)
        - output: () scalar
    """
    inp = _check_pair_inputs(a, b, positives, weights, owner=owner)
    check_choice(direction, ("both", "a2b", "b2a"), owner=owner, arg="direction")
    if positives is not None and positives.dim() != 1:
        raise ValueError(
            f"{owner_name(owner)}: expected `positives` as (B,) group ids when gathering across "
            f"ranks, got a matrix of shape {tuple(positives.shape)}."
        )
    n = a.shape[0]
    sizes = gather_sizes(n, device=a.device, group=group) if is_distributed(group) else [n]
    rank = dist.get_rank(group) if len(sizes) > 1 else 0
    offset, total = sum(sizes[:rank]), sum(sizes)
    a_all = all_gather_with_grad(a, group=group)
    b_all = all_gather_with_grad(b, group=group)
    if positives is not None:
        pairs = make_pairs(n, total, groups_q=positives,
                           groups_k=all_gather_with_grad(positives, group=group))
    else:
        pairs = make_pairs(n, total, offset=offset)
    w_all = None if inp.weights is None else all_gather_with_grad(inp.weights.detach(),
                                                                   group=group)
    v_all = None if w_all is None else (w_all if w_all.dtype == torch.bool else w_all != 0)
    tile = _tile_size(chunk_size, n, total, owner=owner)
    parts = []
    for on, q, k_all in (("a2b", a, b_all), ("b2a", b, a_all)):
        if direction not in ("both", on):
            continue
        t = info_nce_terms(q, k_all, scale, pairs, q_valid=inp.valid, k_valid=v_all,
                           label_smoothing=label_smoothing, rows=True, cols=False,
                           normalize=normalize, tile=tile)
        num, den = _weighted_mean(t.rows, t.row_positives, inp.weights)
        den = den.detach().clone()
        if len(sizes) > 1:
            dist.all_reduce(den, op=dist.ReduceOp.SUM, group=group)
        parts.append(num / den.clamp_min(torch.finfo(num.dtype).tiny))
    loss = parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2
    return loss.to(torch.promote_types(torch.promote_types(a.dtype, b.dtype), scale.dtype))
