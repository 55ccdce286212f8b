"""InfoNCE in (tile x tile) blocks with an exact, recomputing backward (private).

The forward keeps per-row and per-column log-sum-exps over the negatives (in float64) and sums
over the positive pairs; the backward recomputes each block from them. Memory is
O(B * D + tile^2) instead of O(B^2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._contrastive_common import (
    _NEG_INF,
    _compute_dtype,
    _embedding_grads,
    _neg_inf_safe,
    _prep,
    _tiles,
    _valid_tile,
)
from ._contrastive_pairs import _Pairs

__all__ = ["_TiledInfoNCE"]


class _TiledInfoNCE(torch.autograd.Function):
    """Per-anchor InfoNCE terms, both directions, in tiles; backward recomputes the tiles.

    Inputs: raw query and key embeddings (any float dtype), the logit scale (0-dim tensor) and
    a config dict (positives, kept rows, smoothing, tile size, which directions). Outputs
    (loss per query row, loss per key column, positive counts per row and per column).
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, scale: Tensor, cfg: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pairs: _Pairs = cfg["pairs"]
        vq, vk = cfg["vq"], cfg["vk"]
        eps, tile, rows, cols = cfg["eps"], cfg["tile"], cfg["rows"], cfg["cols"]
        ct = _compute_dtype(q.dtype, k.dtype, scale.dtype)
        s = scale.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        dev = qh.device
        diag = pairs.kind == "diag"
        # float64 accumulators: a float32 running log-sum-exp rounds at every tile, and the
        # gradient of the scale (a sum with heavy cancellation) would inherit that error
        neg_r = qh.new_full((n_q,), _NEG_INF, dtype=torch.float64)
        neg_c = qh.new_full((n_k,), _NEG_INF, dtype=torch.float64)
        # pass 1: log-sum-exp over the negatives, rows and columns at once
        for i0, i1 in _tiles(n_q, tile):
            qs = qh[i0:i1] * s  # (t, D)
            for j0, j1 in _tiles(n_k, tile):
                lt = qs @ kh[j0:j1].t()  # (t, t)
                valid = _valid_tile(vq, vk, i0, i1, j0, j1)
                if diag:
                    d = pairs.diag_offset(i0, i1, j0, j1)
                    if d is not None:
                        lt.diagonal(d).fill_(_NEG_INF)
                    if valid is not None:
                        lt.masked_fill_(~valid, _NEG_INF)
                else:
                    pos = pairs.tile(i0, i1, j0, j1, dev)
                    assert pos is not None
                    neg = ~pos if valid is None else ~pos & valid
                    lt.masked_fill_(~neg, _NEG_INF)
                if rows:
                    neg_r[i0:i1] = torch.logaddexp(neg_r[i0:i1], _tile_lse64(lt, 1))
                if cols:
                    neg_c[j0:j1] = torch.logaddexp(neg_c[j0:j1], _tile_lse64(lt, 0))
        neg64 = (neg_r, neg_c)
        neg_r, neg_c = neg_r.to(ct), neg_c.to(ct)
        # pass 2: the positive pairs' terms
        stats_r = stats_c = None
        if diag:
            ri, ci = pairs.diag_index(dev)
            sq, sk = pairs.diag_slices()
            lp = s * torch.linalg.vecdot(qh[sq], kh[sk], dim=1)  # (P,) positive logits
            ok = torch.ones_like(lp, dtype=torch.bool)
            if vq is not None:
                ok = ok & vq[ri]
            if vk is not None:
                ok = ok & vk[ci]
            stats_r = _diag_stats(lp, ok, ri, neg64[0], n_q)
            stats_c = _diag_stats(lp, ok, ci, neg64[1], n_k)
        else:
            stats_r, stats_c = _pos_pass(qh, kh, s, pairs, vq, vk, neg_r, neg_c, tile, eps)
        out_r = _finish(stats_r, neg_r, qh, kh, s, vk, eps) if rows else None
        out_c = _finish(stats_c, neg_c, kh, qh, s, vq, eps) if cols else None
        ctx.save_for_backward(q, k, scale)
        ctx.cfg = cfg
        ctx.ct = ct
        ctx.neg64 = neg64
        ctx.stats = (stats_r, stats_c, neg_r, neg_c,
                     None if out_r is None else (None, *out_r[1:]),
                     None if out_c is None else (None, *out_c[1:]))
        zq, zk = qh.new_zeros(n_q), qh.new_zeros(n_k)
        lr, mr = (out_r[0], out_r[1].clone()) if out_r is not None else (zq, zq.clone())
        lc, mc = (out_c[0], out_c[1].clone()) if out_c is not None else (zk, zk.clone())
        ctx.mark_non_differentiable(mr, mc)
        return lr, mr, lc, mc

    @staticmethod
    def backward(ctx: Any, g_r: Tensor, _gm: Any, g_c: Tensor, _gn: Any
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        q, k, scale = ctx.saved_tensors
        cfg, ct = ctx.cfg, ctx.ct
        pairs: _Pairs = cfg["pairs"]
        vq, vk = cfg["vq"], cfg["vk"]
        eps, tile = cfg["eps"], cfg["tile"]
        stats_r, stats_c, neg_r, neg_c, out_r, out_c = ctx.stats
        s = scale.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        dev = qh.device
        diag = pairs.kind == "diag"
        zq, zk = qh.new_zeros(n_q), qh.new_zeros(n_k)
        cr = _coefficients(g_r.to(ct), stats_r, out_r, neg_r, eps, vk) if out_r is not None \
            else None
        cc = _coefficients(g_c.to(ct), stats_c, out_c, neg_c, eps, vq) if out_c is not None \
            else None
        # exp(L - N) is taken against N rounded to the compute dtype; the rounding is undone
        # per anchor through the coefficient (the float64 N is the exact one)
        h_r, safe_r = (cr["h"] * _rounding(neg_r, ctx.neg64[0]), _neg_inf_safe(neg_r)) if cr \
            else (zq, zq)
        h_c, safe_c = (cc["h"] * _rounding(neg_c, ctx.neg64[1]), _neg_inf_safe(neg_c)) if cc \
            else (zk, zk)
        dq = torch.zeros_like(qh)  # gradient w.r.t. qh, without the scale
        dk = torch.zeros_like(kh)  # gradient w.r.t. kh, scale included
        for i0, i1 in _tiles(n_q, tile):
            qs = qh[i0:i1] * s
            for j0, j1 in _tiles(n_k, tile):
                lt = qs @ kh[j0:j1].t()  # (t, t) recomputed
                if cr is not None:
                    gt = torch.sub(lt, safe_r[i0:i1, None]).exp_().mul_(h_r[i0:i1, None])
                    if cc is not None:
                        gt.add_(torch.sub(lt, safe_c[None, j0:j1]).exp_().mul_(h_c[None, j0:j1]))
                else:
                    gt = torch.sub(lt, safe_c[None, j0:j1]).exp_().mul_(h_c[None, j0:j1])
                if diag:
                    d = pairs.diag_offset(i0, i1, j0, j1)
                    if d is not None:
                        gt.diagonal(d).zero_()
                else:
                    pos = pairs.tile(i0, i1, j0, j1, dev)
                    assert pos is not None
                    gpos = torch.zeros_like(lt)
                    if cr is not None:
                        gpos.add_(_pos_grad(lt, cr, i0, i1, None, eps))
                    if cc is not None:
                        gpos.add_(_pos_grad(lt, cc, j0, j1, 1, eps))
                    gt = gpos.where(pos, gt)
                if eps > 0:
                    const = lt.new_zeros(())
                    if cr is not None:
                        const = const + cr["const"][i0:i1, None]
                    if cc is not None:
                        const = const + cc["const"][None, j0:j1]
                    gt.sub_(const)
                valid = _valid_tile(vq, vk, i0, i1, j0, j1)
                if valid is not None:
                    gt = gt.where(valid, 0.0)
                dq[i0:i1].addmm_(gt, kh[j0:j1])
                dk[j0:j1].addmm_(gt.t(), qs)
        if diag:  # the positive pairs' own entries, outside the tiles
            ri, ci = pairs.diag_index(dev)
            sq, sk = pairs.diag_slices()
            lp = s * torch.linalg.vecdot(qh[sq], kh[sk], dim=1)
            gp = lp.new_zeros(lp.shape)
            if cr is not None:
                gp = gp + _pos_grad(lp, cr, ri, None, "index", eps)
            if cc is not None:
                gp = gp + _pos_grad(lp, cc, ci, None, "index", eps)
            ok = torch.ones_like(lp, dtype=torch.bool)
            if vq is not None:
                ok = ok & vq[ri]
            if vk is not None:
                ok = ok & vk[ci]
            gp = gp.where(ok, 0.0)
            dq[sq].addcmul_(gp[:, None], kh[sk])
            dk[sk].addcmul_((gp * s)[:, None], qh[sq])
        grad_q, grad_k, grad_scale = _embedding_grads(
            ctx.needs_input_grad, q, k, scale, s, qh, kh, dq, dk, vq, vk, cfg["normalize"])
        return grad_q, grad_k, grad_scale, None


def _tile_lse64(lt: Tensor, dim: int) -> Tensor:
    """A tile's log-sum-exp along ``dim`` in float64, without rounding at the logits' magnitude
    (the max is exact, the sum of exponentials has a relative error only)."""
    m = lt.amax(dim)
    m = m.where(m > _NEG_INF, 0.0)
    total = torch.exp(lt - m.unsqueeze(dim)).sum(dim)
    return m.double() + total.double().log()


def _rounding(n: Tensor, n64: Tensor) -> Tensor:
    """``exp(n - n64)``: corrects ``exp(L - n)`` to ``exp(L - n64)``; 1 where n64 is -inf."""
    corr = torch.exp(n.double() - n64).to(n.dtype)
    return corr.where(n64 > _NEG_INF, 1.0)


def _diag_stats(lp: Tensor, ok: Tensor, idx: Tensor, neg64: Tensor, n: int
                ) -> dict[str, Tensor]:
    """Per-anchor sums over the positives when each anchor has at most one (the diagonal)."""
    d = (neg64[idx] - lp.double()).to(lp.dtype)
    zero = lp.new_zeros(n)
    return {
        "count": zero.index_add(0, idx, ok.to(lp.dtype)),
        "softplus": zero.index_add(0, idx, F.softplus(d).where(ok, 0.0)),
        "sigmoid": zero.index_add(0, idx, torch.sigmoid(d).where(ok, 0.0)),
        "lse_pos": lp.new_full((n,), _NEG_INF).index_copy(0, idx, lp.where(ok, _NEG_INF)),
    }


def _pos_pass(qh: Tensor, kh: Tensor, s: Tensor, pairs: _Pairs, vq: Tensor | None,
              vk: Tensor | None, neg_r: Tensor, neg_c: Tensor, tile: int, eps: float
              ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Sums over the positive pairs, for anchors with any number of them (a second pass)."""
    n_q, n_k = qh.shape[0], kh.shape[0]
    st_r = {"count": qh.new_zeros(n_q), "softplus": qh.new_zeros(n_q),
            "sigmoid": qh.new_zeros(n_q), "lse_pos": qh.new_full((n_q,), _NEG_INF)}
    st_c = {"count": qh.new_zeros(n_k), "softplus": qh.new_zeros(n_k),
            "sigmoid": qh.new_zeros(n_k), "lse_pos": qh.new_full((n_k,), _NEG_INF)}
    for i0, i1 in _tiles(n_q, tile):
        qs = qh[i0:i1] * s
        for j0, j1 in _tiles(n_k, tile):
            pos = pairs.tile(i0, i1, j0, j1, qh.device)
            assert pos is not None
            valid = _valid_tile(vq, vk, i0, i1, j0, j1)
            if valid is not None:
                pos = pos & valid
            lt = qs @ kh[j0:j1].t()
            for st, dim, neg, a0, a1 in ((st_r, 1, neg_r[i0:i1, None], i0, i1),
                                         (st_c, 0, neg_c[None, j0:j1], j0, j1)):
                d = neg - lt
                st["count"][a0:a1] += pos.sum(dim)
                st["softplus"][a0:a1] += F.softplus(d).where(pos, 0.0).sum(dim)
                st["sigmoid"][a0:a1] += torch.sigmoid(d).where(pos, 0.0).sum(dim)
                if eps > 0:
                    lse = torch.logsumexp(lt.where(pos, _NEG_INF), dim)
                    st["lse_pos"][a0:a1] = torch.logaddexp(st["lse_pos"][a0:a1], lse)
    return st_r, st_c


def _finish(st: dict[str, Tensor], neg: Tensor, xh: Tensor, yh: Tensor, s: Tensor,
            vy: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(loss per anchor, positive count, lse over all candidates, 1/|V|) from the sums."""
    count = st["count"]
    term = st["softplus"] / count.clamp_min(1)
    lse_all = inv_v = None
    if eps > 0:
        n_valid = float(yh.shape[0]) if vy is None else vy.sum().to(yh.dtype)
        inv_v = 1.0 / torch.as_tensor(n_valid, dtype=yh.dtype, device=yh.device).clamp_min(1)
        mean_all = s * (xh @ (yh.sum(0) * inv_v))  # candidates' mean logit (removed rows are 0)
        lse_all = torch.logaddexp(neg, st["lse_pos"])
        term = (1 - eps) * term + eps * (lse_all - mean_all)
    return term.where(count > 0, 0.0), count, lse_all, inv_v


def _coefficients(g: Tensor, st: dict[str, Tensor], out: tuple[Any, ...], neg: Tensor,
                  eps: float, vy: Tensor | None) -> dict[str, Tensor]:
    """Per-anchor coefficients of d loss / d L: on negatives ``h * exp(L - N)``, on positives
    ``-c * sigmoid(N - L) + a * eps * exp(L - M)``, minus ``const`` on every candidate."""
    count, lse_all, inv_v = out[1], out[2], out[3]
    alpha = g.where(count > 0, 0.0)
    c = alpha * (1 - eps) / count.clamp_min(1)
    h = c * st["sigmoid"]
    res = {"alpha": alpha, "c": c, "neg": neg}
    if eps > 0:
        assert lse_all is not None and inv_v is not None
        h = h + alpha * eps * torch.exp(neg - lse_all)
        res["lse_all"] = lse_all
        res["const"] = alpha * eps * inv_v
    res["h"] = h
    return res


def _pos_grad(lt: Tensor, co: dict[str, Tensor], a0: Any, a1: Any, dim: Any, eps: float
              ) -> Tensor:
    """d loss / d L on positive entries for one direction. ``dim`` None: anchors on rows of a
    tile; 1: anchors on its columns; "index": ``lt`` is a vector of pairs and ``a0`` indexes."""
    if dim == "index":
        sel: Any = a0
    elif dim is None:
        sel = (slice(a0, a1), None)
    else:
        sel = (None, slice(a0, a1))
    out = -co["c"][sel] * torch.sigmoid(co["neg"][sel] - lt)
    if eps > 0:
        out = out + co["alpha"][sel] * eps * torch.exp(lt - co["lse_all"][sel])
    return out
