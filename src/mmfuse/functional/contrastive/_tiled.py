"""InfoNCE in (tile x tile) blocks with an exact, recomputing backward (private).

The forward keeps per-row and per-column log-sum-exps over the negatives (in float64) and sums
over the positive pairs; the backward recomputes each block from them. Memory is
O(B * D + workers * tile^2) instead of O(B^2).

Two tile bodies give the same values to rounding:

- the fast one (one positive per anchor, eager mode, every logit within +-40 in float32, +-300
  in float64: then ``exp(L)`` is finite and normal without subtracting a maximum) does a tile
  in a handful of passes over one preallocated buffer: the forward ``mm``, ``exp2_`` (the
  query rows carry ``log2 e``, so ``2^(L log2 e) = e^L``) and the row and column sums (one
  exponential serves both directions); the backward ``mm``, ``exp2_``, one
  multiply by ``a_i + b_j`` (``a_i = h_i exp(-N_i)``, the per-anchor coefficients, folded in
  float64) and the two gradient matmuls. Label smoothing's constant part is a rank-one term
  applied outside the tiles.
- the general one (several positives per anchor, larger logits, ``torch.compile``) subtracts
  each tile's row and column maxima first.

Both walk blocks of query rows with :func:`_run_row_blocks` (one single-threaded worker per
intra-op thread on CPU, a fixed assignment of blocks to workers: bitwise reproducible).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
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
        workers = _workers(qh, len(_tiles(n_q, tile)))
        fast = diag and _exp_in_range(qh, kh, s)
        # pass 1: log-sum-exp over the negatives, rows and columns at once
        lse = _neg_lse_fast if fast else _neg_lse_general
        neg_r, neg_c = lse(qh, kh, s, pairs, vq, vk, tile, rows, cols, workers)
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
        ctx.fast, ctx.workers = fast, workers
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
        dev = qh.device
        diag = pairs.kind == "diag"
        cr = _coefficients(g_r.to(ct), stats_r, out_r, neg_r, eps, vk) if out_r is not None \
            else None
        cc = _coefficients(g_c.to(ct), stats_c, out_c, neg_c, eps, vq) if out_c is not None \
            else None
        if ctx.fast:
            dq, dk = _grad_tiles_fast(qh, kh, s, pairs, ctx.neg64, cr, cc, tile, ctx.workers)
        else:
            dq, dk = _grad_tiles_general(qh, kh, s, pairs, vq, vk, eps, cr, cc, neg_r, neg_c,
                                         ctx.neg64, tile, ctx.workers)
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


# ----------------------------------------------------------------------------- tile bodies

_LOG2E = 1.0 / math.log(2.0)
"""The fast body takes ``exp(L)`` as ``2^(L log2 e)``, with ``log2 e`` folded into the query
rows before the matmul: ``exp2`` is several times cheaper than ``exp`` on CPU."""

_EXP_LIMIT = {torch.float32: 40.0, torch.float64: 300.0}
"""The fast body's bound on ``|L|``: ``exp(L)``, the row sums (at most B e^40) and the
coefficients ``h exp(-N)`` (down to about h e^-52) stay finite and normal in the dtype."""


def _exp_in_range(qh: Tensor, kh: Tensor, s: Tensor) -> bool:
    """Whether every logit is within the fast body's range (``|s| max|q| max|k|``), in eager
    mode only: the test reads tensor values, so a compiled graph takes the general body."""
    if torch.compiler.is_compiling():
        return False
    bound = s.abs() * torch.linalg.vector_norm(qh, dim=1).amax() \
        * torch.linalg.vector_norm(kh, dim=1).amax()
    return bool(bound <= _EXP_LIMIT[qh.dtype])


def _buffers(workers: int, n: int, x: Tensor) -> list[Tensor]:
    return [x.new_empty(n) for _ in range(workers)]


def _view(buf: Tensor, rows: int, cols: int) -> Tensor:
    return buf[:rows * cols].view(rows, cols)


def _neg_lse_fast(qh: Tensor, kh: Tensor, s: Tensor, pairs: _Pairs, vq: Tensor | None,
                  vk: Tensor | None, tile: int, rows: bool, cols: bool, workers: int
                  ) -> tuple[Tensor, Tensor]:
    """Float64 log-sum-exps over the negatives (diagonal positives), one ``exp`` per logit."""
    n_q, n_k = qh.shape[0], kh.shape[0]
    sum_r = qh.new_zeros(n_q, dtype=torch.float64)
    sum_c = [qh.new_zeros(n_k, dtype=torch.float64) for _ in range(workers)]
    fq = None if vq is None else vq.to(qh.dtype)
    fk = None if vk is None else vk.to(qh.dtype)
    bufs = _buffers(workers, min(tile, n_q) * min(tile, n_k), qh)

    def body(w: int, i0: int, i1: int) -> None:
        qs2 = qh[i0:i1] * (s * _LOG2E)
        acc = qh.new_zeros(i1 - i0, dtype=torch.float64)
        for j0, j1 in _tiles(n_k, tile):
            e = _view(bufs[w], i1 - i0, j1 - j0)
            torch.mm(qs2, kh[j0:j1].t(), out=e).exp2_()  # exp(L) = 2^(L log2 e), (t, t)
            d = pairs.diag_offset(i0, i1, j0, j1)
            if d is not None:
                e.diagonal(d).zero_()  # the positives are not negatives
            if fq is not None:
                e.mul_(fq[i0:i1, None])
            if fk is not None:
                e.mul_(fk[None, j0:j1])
            if rows:
                acc += e.sum(1)
            if cols:
                sum_c[w][j0:j1] += e.sum(0)
        sum_r[i0:i1] = acc

    _run_row_blocks(n_q, tile, workers, body)
    total_c = sum_c[0]
    for part in sum_c[1:]:  # in worker order: reproducible
        total_c += part
    return sum_r.log(), total_c.log()  # log(0) = -inf: no negatives


def _neg_lse_general(qh: Tensor, kh: Tensor, s: Tensor, pairs: _Pairs, vq: Tensor | None,
                     vk: Tensor | None, tile: int, rows: bool, cols: bool, workers: int
                     ) -> tuple[Tensor, Tensor]:
    """Float64 log-sum-exps over the negatives, any positives, each tile shifted by its maxima."""
    n_q, n_k = qh.shape[0], kh.shape[0]
    neg_r = qh.new_full((n_q,), _NEG_INF, dtype=torch.float64)
    neg_cs = [qh.new_full((n_k,), _NEG_INF, dtype=torch.float64) for _ in range(workers)]
    diag = pairs.kind == "diag"

    def body(w: int, i0: int, i1: int) -> None:
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
                pos = pairs.tile(i0, i1, j0, j1, qh.device)
                assert pos is not None
                neg = ~pos if valid is None else ~pos & valid
                lt.masked_fill_(~neg, _NEG_INF)
            if rows:
                neg_r[i0:i1] = torch.logaddexp(neg_r[i0:i1], _tile_lse64(lt, 1))
            if cols:
                neg_cs[w][j0:j1] = torch.logaddexp(neg_cs[w][j0:j1], _tile_lse64(lt, 0))

    _run_row_blocks(n_q, tile, workers, body)
    neg_c = neg_cs[0]
    for part in neg_cs[1:]:
        neg_c = torch.logaddexp(neg_c, part)
    return neg_r, neg_c


def _grad_tiles_fast(qh: Tensor, kh: Tensor, s: Tensor, pairs: _Pairs,
                     neg64: tuple[Tensor, Tensor], cr: dict[str, Tensor] | None,
                     cc: dict[str, Tensor] | None, tile: int, workers: int
                     ) -> tuple[Tensor, Tensor]:
    """(d loss / d qh without the scale, d loss / d kh with it) from the negatives and the
    label-smoothing constants; diagonal positives excluded (added by the caller)."""
    n_q, n_k = qh.shape[0], kh.shape[0]
    ct = qh.dtype

    def coef(co: dict[str, Tensor] | None, n64: Tensor, n: int) -> Tensor:
        # d loss / d L on a negative is h * exp(L - N) = exp(L) * (h * exp(-N)); in float64,
        # 0 where there is no negative (N = -inf) or no weight
        if co is None:
            return qh.new_zeros(n)
        f = co["h"].double() * torch.exp(-n64)
        return f.where((n64 > _NEG_INF) & (co["h"] != 0), 0.0).to(ct)

    a, b = coef(cr, neg64[0], n_q), coef(cc, neg64[1], n_k)
    both = cr is not None and cc is not None
    dq = torch.zeros_like(qh)
    dks = [torch.zeros_like(kh) for _ in range(workers)]
    size = min(tile, n_q) * min(tile, n_k)
    bufs, abs_ = _buffers(workers, size, qh), _buffers(workers if both else 0, size, qh)

    def body(w: int, i0: int, i1: int) -> None:
        qs = qh[i0:i1] * s
        qs2 = qh[i0:i1] * (s * _LOG2E)
        for j0, j1 in _tiles(n_k, tile):
            e = _view(bufs[w], i1 - i0, j1 - j0)
            torch.mm(qs2, kh[j0:j1].t(), out=e).exp2_()
            if both:
                e.mul_(torch.add(a[i0:i1, None], b[None, j0:j1],
                                 out=_view(abs_[w], i1 - i0, j1 - j0)))
            elif cr is not None:
                e.mul_(a[i0:i1, None])
            else:
                e.mul_(b[None, j0:j1])
            d = pairs.diag_offset(i0, i1, j0, j1)
            if d is not None:
                e.diagonal(d).zero_()
            dq[i0:i1].addmm_(e, kh[j0:j1])
            dks[w][j0:j1].addmm_(e.t(), qs)

    _run_row_blocks(n_q, tile, workers, body)
    dk = dks[0]
    for part in dks[1:]:
        dk += part
    # label smoothing: -(const_r[i] + const_c[j]) on every kept pair (removed rows of qh and
    # kh are zero, and their own gradients are dropped later), a rank-one term
    if cr is not None and "const" in cr:
        c = cr["const"]
        dq.addr_(c, kh.sum(0), alpha=-1.0)
        dk.sub_((c @ qh) * s)
    if cc is not None and "const" in cc:
        c = cc["const"]
        dq.sub_(c @ kh)
        dk.addr_(c, qh.sum(0) * s, alpha=-1.0)
    return dq, dk


def _grad_tiles_general(qh: Tensor, kh: Tensor, s: Tensor, pairs: _Pairs, vq: Tensor | None,
                        vk: Tensor | None, eps: float, cr: dict[str, Tensor] | None,
                        cc: dict[str, Tensor] | None, neg_r: Tensor, neg_c: Tensor,
                        neg64: tuple[Tensor, Tensor], tile: int, workers: int
                        ) -> tuple[Tensor, Tensor]:
    """As :func:`_grad_tiles_fast` for any positives and logits, each tile against the
    per-anchor N; positives of the group and matrix kinds included."""
    n_q, n_k = qh.shape[0], kh.shape[0]
    diag = pairs.kind == "diag"
    zq, zk = qh.new_zeros(n_q), qh.new_zeros(n_k)
    # exp(L - N) is taken against N rounded to the compute dtype; the rounding is undone
    # per anchor through the coefficient (the float64 N is the exact one)
    h_r, safe_r = (cr["h"] * _rounding(neg_r, neg64[0]), _neg_inf_safe(neg_r)) if cr \
        else (zq, zq)
    h_c, safe_c = (cc["h"] * _rounding(neg_c, neg64[1]), _neg_inf_safe(neg_c)) if cc \
        else (zk, zk)
    dq = torch.zeros_like(qh)  # gradient w.r.t. qh, without the scale
    dks = [torch.zeros_like(kh) for _ in range(workers)]  # w.r.t. kh, scale included

    def body(w: int, i0: int, i1: int) -> None:
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
                pos = pairs.tile(i0, i1, j0, j1, qh.device)
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
            dks[w][j0:j1].addmm_(gt.t(), qs)

    _run_row_blocks(n_q, tile, workers, body)
    dk = dks[0]
    for part in dks[1:]:
        dk += part
    return dq, dk
