"""Per-anchor statistics of a (Q, K) logit matrix, dense or in tiles (private).

For anchor (query row) i, with ``L[i, j] = s * <q_i, k_j>``, the candidates
``C_i = {j kept : j != self(i)}`` (``self(i) = i + self_offset``; a self-contrast loss leaves
an anchor's own row out) and the positives ``P_i`` (a subset of ``C_i``):

- ``lse_c[i] = logsumexp_{j in C_i} L[i, j]`` (-inf when C_i is empty),
- ``sum_p[i] = sum_{p in P_i} L[i, p]``,
- ``lse_p[i] = logsumexp_{p in P_i} L[i, p]`` (-inf when P_i is empty; only when asked),
- ``n_pos[i] = |P_i|`` (not differentiable).

Supervised contrastive losses and InfoNCE against explicit negatives are simple functions of
these, which autograd composes. :class:`_TiledRows` computes them in (tile x tile) blocks,
accumulating in float64, and its backward recomputes each block from them:
``dL[i, j] = g_c[i] softmax_{C_i}(L[i])_j + g_s[i] [j in P_i] + g_p[i] softmax_{P_i}(L[i])_j``,
so memory is O((Q + K) * D + workers * tile^2). :func:`_rows_dense` is the same on the full
matrix, differentiated by autograd.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._common import (
    _NEG_INF,
    _compute_dtype,
    _embedding_grads,
    _neg_inf_safe,
    _prep,
    _run_row_blocks,
    _tiles,
    _valid_tile,
    _workers,
)
from ._pairs import _Pairs
from ._tiled import _rounding, _tile_lse64

__all__ = ["RowStats", "_TiledRows", "_row_masks", "_rows", "_rows_dense"]


class RowStats(NamedTuple):
    """Per-anchor statistics (see the module docstring), in the compute dtype."""

    lse_c: Tensor
    sum_p: Tensor
    lse_p: Tensor
    n_pos: Tensor


def _row_masks(pairs: _Pairs | None, self_offset: int | None, vq: Tensor | None,
               vk: Tensor | None, i0: int, i1: int, j0: int, j1: int, device: torch.device
               ) -> tuple[Tensor, Tensor | None]:
    """(candidates, positives or None) of block (i0:i1, j0:j1) as bool (t, t) masks."""
    valid = _valid_tile(vq, vk, i0, i1, j0, j1)
    cand = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device) if valid is None \
        else valid.clone()
    if self_offset is not None:
        d = _Pairs("diag", 0, 0, offset=self_offset).diag_offset(i0, i1, j0, j1)
        if d is not None:  # out of place (in-place fills do not export to ONNX)
            rows = torch.arange(i1 - i0, device=device)[:, None]
            cand = cand & (rows + d != torch.arange(j1 - j0, device=device)[None, :])
    pos = None if pairs is None else pairs.tile(i0, i1, j0, j1, device)
    return cand, None if pos is None else pos & cand


def _masked_lse(x: Tensor, keep: Tensor) -> Tensor:
    """Row log-sum-exp over ``keep``; -inf (with a zero gradient) on rows keeping nothing."""
    has = keep.any(1)
    fill = torch.where(has, _NEG_INF, 0.0)[:, None]  # a row of zeros: no exp(-inf - -inf)
    return torch.logsumexp(x.where(keep, fill), dim=1).where(has, _NEG_INF)


def _rows_dense(q: Tensor, k: Tensor, scale: Tensor, cfg: dict[str, Any]) -> RowStats:
    ct = _compute_dtype(q.dtype, k.dtype, scale.dtype)
    vq, vk = cfg["vq"], cfg["vk"]
    qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
    logits = scale.to(ct) * (qh @ kh.t())  # (Q, K)
    cand, pos = _row_masks(cfg["pairs"], cfg["self_offset"], vq, vk, 0, q.shape[0], 0,
                           k.shape[0], q.device)
    lse_c = _masked_lse(logits, cand)
    if pos is None:
        zero = logits.new_zeros(q.shape[0])
        return RowStats(lse_c, zero, torch.full_like(zero, _NEG_INF), zero)
    lse_p = _masked_lse(logits, pos) if cfg["lse_p"] else torch.full_like(lse_c, _NEG_INF)
    return RowStats(lse_c, logits.where(pos, 0.0).sum(1), lse_p, pos.sum(1).to(ct))


class _TiledRows(torch.autograd.Function):
    """:func:`_rows_dense` in tiles with an exact, recomputing backward.

    cfg: ``pairs`` (positive spec, or None: no positives), ``self_offset`` (int or None),
    ``vq``/``vk`` (kept rows or None), ``normalize``, ``lse_p`` (whether to compute it),
    ``tile``.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, scale: Tensor, cfg: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ct = _compute_dtype(q.dtype, k.dtype, scale.dtype)
        s = scale.detach().to(ct)
        vq, vk, tile = cfg["vq"], cfg["vk"], cfg["tile"]
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        f64 = torch.float64
        lse_c = qh.new_full((n_q,), _NEG_INF, dtype=f64)
        lse_p = qh.new_full((n_q,), _NEG_INF, dtype=f64)
        sum_p, count = qh.new_zeros(n_q, dtype=f64), qh.new_zeros(n_q, dtype=f64)
        workers = _workers(qh, len(_tiles(n_q, tile)))

        def body(w: int, i0: int, i1: int) -> None:  # writes rows i0:i1 only
            qs = qh[i0:i1] * s
            for j0, j1 in _tiles(n_k, tile):
                lt = qs @ kh[j0:j1].t()  # (t, t)
                cand, pos = _row_masks(cfg["pairs"], cfg["self_offset"], vq, vk, i0, i1, j0,
                                       j1, qh.device)
                lse_c[i0:i1] = torch.logaddexp(
                    lse_c[i0:i1], _tile_lse64(lt.masked_fill(~cand, _NEG_INF), 1))
                if pos is None:
                    continue
                sum_p[i0:i1] += lt.where(pos, 0.0).sum(1, dtype=torch.float64)
                count[i0:i1] += pos.sum(1)
                if cfg["lse_p"]:
                    lse_p[i0:i1] = torch.logaddexp(
                        lse_p[i0:i1], _tile_lse64(lt.masked_fill(~pos, _NEG_INF), 1))

        _run_row_blocks(n_q, tile, workers, body)
        ctx.save_for_backward(q, k, scale)
        ctx.cfg, ctx.ct, ctx.workers = cfg, ct, workers
        ctx.lse64 = (lse_c, lse_p)
        cnt = count.to(ct)
        ctx.mark_non_differentiable(cnt)
        return lse_c.to(ct), sum_p.to(ct), lse_p.to(ct), cnt

    @staticmethod
    def backward(ctx: Any, g_c: Tensor | None, g_s: Tensor | None, g_p: Tensor | None,
                 _g_n: Any) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        q, k, scale = ctx.saved_tensors
        cfg, ct, workers = ctx.cfg, ctx.ct, ctx.workers
        vq, vk, tile = cfg["vq"], cfg["vk"], cfg["tile"]
        s = scale.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        coef: list[tuple[Tensor, Tensor] | None] = []  # (per-row coefficient, the row's log-normaliser) of each softmax term
        for g, n64 in ((g_c, ctx.lse64[0]), (g_p, ctx.lse64[1])):
            if g is None or (n64 is ctx.lse64[1] and not cfg["lse_p"]):
                coef.append(None)
                continue
            n = n64.to(ct)
            # exp(L - n) against n rounded to ct, the rounding undone through the coefficient
            coef.append((g.to(ct) * _rounding(n, n64), _neg_inf_safe(n)))
        gs = None if g_s is None else g_s.to(ct)
        dq = torch.zeros_like(qh)  # w.r.t. qh, without the scale
        dks = [torch.zeros_like(kh) for _ in range(workers)]  # w.r.t. kh, scale included

        def body(w: int, i0: int, i1: int) -> None:
            qs = qh[i0:i1] * s
            for j0, j1 in _tiles(n_k, tile):
                lt = qs @ kh[j0:j1].t()  # (t, t) recomputed
                cand, pos = _row_masks(cfg["pairs"], cfg["self_offset"], vq, vk, i0, i1, j0,
                                       j1, qh.device)
                gt = torch.zeros_like(lt)
                for co, mask in zip(coef, (cand, pos)):
                    if co is not None and mask is not None:
                        e = torch.sub(lt, co[1][i0:i1, None]).exp_().mul_(co[0][i0:i1, None])
                        gt.add_(e.where(mask, 0.0))
                if gs is not None and pos is not None:
                    gt.add_(gs[i0:i1, None].where(pos, 0.0))
                dq[i0:i1].addmm_(gt, kh[j0:j1])
                dks[w][j0:j1].addmm_(gt.t(), qs)

        _run_row_blocks(n_q, tile, workers, body)
        dk = dks[0]
        for part in dks[1:]:  # in worker order: reproducible
            dk += part
        grad_q, grad_k, grad_scale = _embedding_grads(
            ctx.needs_input_grad, q, k, scale, s, qh, kh, dq, dk, vq, vk, cfg["normalize"])
        return grad_q, grad_k, grad_scale, None


def _rows(q: Tensor, k: Tensor, scale: Tensor, *, pairs: _Pairs | None,
          self_offset: int | None, vq: Tensor | None, vk: Tensor | None, normalize: bool,
          lse_p: bool, tile: int | None) -> RowStats:
    """The per-anchor statistics, dense (``tile=None``) or tiled."""
    cfg = {"pairs": pairs, "self_offset": self_offset, "vq": vq, "vk": vk,
           "normalize": normalize, "lse_p": lse_p, "tile": tile}
    if tile is None:
        return _rows_dense(q, k, scale, cfg)
    return RowStats(*_TiledRows.apply(q, k, scale, cfg))
