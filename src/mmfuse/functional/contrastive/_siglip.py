"""Per-row SigLIP sums, dense (autograd) and tiled (recomputing backward) (private)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    _compute_dtype,
    _embedding_grads,
    _prep,
    _run_row_blocks,
    _tiles,
    _valid_tile,
    _workers,
)
from ._pairs import _Pairs

__all__ = ["_TiledSigLIP", "_siglip_dense", "_siglip_sums"]


def _siglip_dense(q: Tensor, k: Tensor, scale: Tensor, bias: Tensor, pairs: _Pairs,
                  vq: Tensor | None, vk: Tensor | None, normalize: bool) -> Tensor:
    ct = _compute_dtype(q.dtype, k.dtype, scale.dtype, bias.dtype)
    qh, kh = _prep(q, vq, normalize, ct), _prep(k, vk, normalize, ct)
    logits = scale.to(ct) * (qh @ kh.t()) + bias.to(ct)  # (Q, K)
    pos = pairs.dense(q.device)
    per = F.softplus(torch.where(pos, -logits, logits))
    valid = _valid_tile(vq, vk, 0, q.shape[0], 0, k.shape[0])
    if valid is not None:
        per = per.where(valid, 0.0)
    return per.sum(1)


class _TiledSigLIP(torch.autograd.Function):
    """Per-row SigLIP sums in tiles; backward recomputes the tiles (memory O(B * tile)).

    A tile is a few passes over one preallocated buffer: ``addmm`` (the bias in its ``beta``
    term), ``softplus`` (forward) or ``sigmoid_`` (backward), the positives as a strided
    correction of the diagonal (or a select for groups and matrices), and the row sums; the
    upstream per-row gradient scales the matmul operands instead of the tile. Blocks of query
    rows are walked by :func:`_run_row_blocks` (bitwise reproducible)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, scale: Tensor, bias: Tensor,
                cfg: dict[str, Any]) -> Tensor:
        pairs: _Pairs = cfg["pairs"]
        vq, vk, tile = cfg["vq"], cfg["vk"], cfg["tile"]
        ct = _compute_dtype(q.dtype, k.dtype, scale.dtype, bias.dtype)
        s, beta = scale.detach().to(ct), bias.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        workers = _workers(qh, len(_tiles(n_q, tile)))
        fk = None if vk is None else vk.to(ct)
        bufs = [qh.new_empty(min(tile, n_q) * min(tile, n_k)) for _ in range(workers)]
        out = qh.new_zeros(n_q)

        def body(w: int, i0: int, i1: int) -> None:
            qs = qh[i0:i1] * s
            for j0, j1 in _tiles(n_k, tile):
                lt = torch.addmm(beta, qs, kh[j0:j1].t(),
                                 out=bufs[w][:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0))
                # softplus(L) on negatives, softplus(-L) on positives
                if pairs.kind == "diag":
                    d = pairs.diag_offset(i0, i1, j0, j1)
                    lp = None if d is None else lt.diagonal(d).neg()
                    per = F.softplus(lt)
                    if d is not None and lp is not None:
                        per.diagonal(d).copy_(F.softplus(lp))
                else:
                    pos = pairs.tile(i0, i1, j0, j1, qh.device)
                    per = F.softplus(lt if pos is None else torch.where(pos, -lt, lt))
                out[i0:i1] += per.sum(1) if fk is None else per @ fk[j0:j1]

        _run_row_blocks(n_q, tile, workers, body)
        ctx.save_for_backward(q, k, scale, bias)
        ctx.cfg, ctx.ct, ctx.workers = cfg, ct, workers
        return out if vq is None else out.where(vq, 0.0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        q, k, scale, bias = ctx.saved_tensors
        cfg, ct, workers = ctx.cfg, ctx.ct, ctx.workers
        pairs: _Pairs = cfg["pairs"]
        vq, vk, tile = cfg["vq"], cfg["vk"], cfg["tile"]
        s, beta = scale.detach().to(ct), bias.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        g = g.to(ct)
        if vq is not None:
            g = g.where(vq, 0.0)
        fk = None if vk is None else vk.to(ct)
        dq = torch.zeros_like(qh)  # without the per-row gradient g, applied at the end
        dks = [torch.zeros_like(kh) for _ in range(workers)]
        dbias = qh.new_zeros(workers, dtype=torch.float64)
        bufs = [qh.new_empty(min(tile, n_q) * min(tile, n_k)) for _ in range(workers)]

        def body(w: int, i0: int, i1: int) -> None:
            qs = qh[i0:i1] * s
            gqs = qs * g[i0:i1, None]
            gb = qh.new_zeros(i1 - i0)
            for j0, j1 in _tiles(n_k, tile):
                gt = torch.addmm(beta, qs, kh[j0:j1].t(),
                                 out=bufs[w][:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0))
                gt.sigmoid_()  # d softplus(L) / dL
                pos = None
                if pairs.kind == "diag":
                    d = pairs.diag_offset(i0, i1, j0, j1)
                    if d is not None:
                        gt.diagonal(d).sub_(1.0)  # d softplus(-L) / dL = sigmoid(L) - 1
                else:
                    pos = pairs.tile(i0, i1, j0, j1, qh.device)
                    if pos is not None:
                        gt.sub_(pos.to(ct))
                # removed keys: their rows of kh are zero (no gradient reaches a kept query)
                # and their own gradients are dropped; only the bias needs them masked
                gb += gt.sum(1) if fk is None else gt @ fk[j0:j1]
                dq[i0:i1].addmm_(gt, kh[j0:j1])
                dks[w][j0:j1].addmm_(gt.t(), gqs)
            dbias[w] += (gb.double() * g[i0:i1].double()).sum()

        _run_row_blocks(n_q, tile, workers, body)
        dk = dks[0]
        for part in dks[1:]:
            dk += part
        dq.mul_(g[:, None])
        grad_bias = dbias.sum().to(bias.dtype) if ctx.needs_input_grad[3] else None
        grad_q, grad_k, grad_scale = _embedding_grads(
            ctx.needs_input_grad, q, k, scale, s, qh, kh, dq, dk, vq, vk, cfg["normalize"])
        return grad_q, grad_k, grad_scale, grad_bias, None


def _siglip_sums(q: Tensor, k: Tensor, scale: Tensor, bias: Tensor, *, pairs: _Pairs,
                 vq: Tensor | None, vk: Tensor | None, tile: int | None, normalize: bool,
                 weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """The weighted sum of the per-anchor SigLIP terms of the rows ``q`` against the keys
    ``k`` (dense for ``tile=None``, else tiled) and the sum of the weights (ones by default):
    the loss is their ratio, over one process or over the ranks."""
    if tile is None:
        per_row = _siglip_dense(q, k, scale, bias, pairs, vq, vk, normalize)
    else:
        cfg = {"pairs": pairs, "vq": vq, "vk": vk, "tile": tile, "normalize": normalize}
        per_row = _TiledSigLIP.apply(q, k, scale, bias, cfg)
    w = torch.ones_like(per_row) if weights is None else weights.to(per_row.dtype)
    return (w * per_row).sum(), w.sum()
