"""Contrastive losses: symmetric InfoNCE and the pairwise sigmoid (SigLIP) loss.

Both come in two exact formulations that give the same values and gradients:

- a dense one, which builds the (B, B) logit matrix and lets autograd differentiate it;
- a tiled one (a custom :class:`torch.autograd.Function`), which walks the logit matrix in
  (tile x tile) blocks, keeps only per-row and per-column statistics (log-sum-exps over the
  negatives), and recomputes each block in the backward pass. It never holds more than a few
  blocks, so memory grows as O(B * D + tile^2) instead of O(B^2), and its gradients for both
  embeddings, the logit scale and the bias are exact (not a truncated or detached variant).

``chunk_size=None`` (or ``"auto"``) picks the tiled path when either side exceeds
:data:`DEFAULT_TILE` rows; an int forces it with that tile size.

Definitions (``L[i, j] = scale * <a_i, b_j> + bias``; P the positive pairs; V the kept samples):

- InfoNCE, anchor ``a_i`` against the candidates ``b_j``, j in V: the negatives are
  ``Neg_i = {j in V : not P[i, j]}``, ``N_i = logsumexp_{j in Neg_i} L[i, j]``, and
  ``loss_i = mean_{p in P_i} -log(e^{L[i,p]} / (e^{L[i,p]} + e^{N_i}))``: every positive is
  scored against the negatives only, so other positives are never pushed away (with one positive
  per row this is the usual cross-entropy). Label smoothing mixes in ``eps * (logsumexp_V L[i] -
  mean_V L[i])``, the cross-entropy against a uniform target, as ``F.cross_entropy`` does.
  The b -> a direction is the same on the transposed matrix; ``"both"`` averages the two.
- SigLIP: ``loss = sum_i w_i sum_{j in V} softplus(-z_ij L[i, j]) / sum_i w_i`` with
  ``z_ij = +1`` for positive pairs and -1 otherwise (Zhai et al., 2023: the sum over pairs
  divided by the batch size).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice, check_positive, check_tensor, format_shape, owner_name

__all__ = [
    "DEFAULT_TILE",
    "NORM_EPS",
    "InfoNCETerms",
    "info_nce",
    "info_nce_terms",
    "make_pairs",
    "siglip_loss",
]

DEFAULT_TILE = 1024
"""Tile size of the tiled path; also the size above which ``chunk_size=None`` tiles."""

NORM_EPS = 1e-6
"""L2 normalisation divides by ``max(||x||, NORM_EPS)``: a zero vector maps to zero and its
gradient stays bounded (by ``1 / NORM_EPS`` times the incoming one)."""

_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- positive pairs


class _Pairs:
    """Which (query i, key j) pairs are positive: a shifted diagonal (``j = i + offset``),
    equal group ids, or an explicit bool matrix. ``tile`` returns None for a block without any."""

    def __init__(
        self,
        kind: str,
        n_q: int,
        n_k: int,
        *,
        offset: int = 0,
        gq: Tensor | None = None,
        gk: Tensor | None = None,
        matrix: Tensor | None = None,
    ) -> None:
        self.kind, self.n_q, self.n_k, self.offset = kind, n_q, n_k, offset
        self.gq, self.gk, self.matrix = gq, gk, matrix

    def transposed(self) -> _Pairs:
        return _Pairs(
            self.kind, self.n_k, self.n_q, offset=-self.offset, gq=self.gk, gk=self.gq,
            matrix=None if self.matrix is None else self.matrix.t(),
        )

    def diag_offset(self, i0: int, i1: int, j0: int, j1: int) -> int | None:
        """For the diagonal kind: the local diagonal offset of block (i0:i1, j0:j1), or None."""
        lo, hi = i0 + self.offset, i1 + self.offset
        if hi <= j0 or lo >= j1:
            return None
        return lo - j0

    def tile(self, i0: int, i1: int, j0: int, j1: int, device: torch.device) -> Tensor | None:
        if self.kind == "diag":
            if self.diag_offset(i0, i1, j0, j1) is None:
                return None
            rows = torch.arange(i0, i1, device=device) + self.offset
            cols = torch.arange(j0, j1, device=device)
            return rows[:, None] == cols[None, :]
        if self.kind == "group":
            assert self.gq is not None and self.gk is not None
            return self.gq[i0:i1, None] == self.gk[None, j0:j1]
        assert self.matrix is not None
        return self.matrix[i0:i1, j0:j1]

    def dense(self, device: torch.device) -> Tensor:
        out = self.tile(0, self.n_q, 0, self.n_k, device)
        if out is None:
            return torch.zeros(self.n_q, self.n_k, dtype=torch.bool, device=device)
        return out

    def diag_index(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """For the diagonal kind: (query rows, key columns) of the in-range pairs."""
        sq, _ = self.diag_slices()
        rows = torch.arange(sq.start, sq.stop, device=device)
        return rows, rows + self.offset

    def diag_slices(self) -> tuple[slice, slice]:
        """For the diagonal kind: the query rows and key rows of the in-range pairs."""
        lo = max(0, -self.offset)
        hi = max(lo, min(self.n_q, self.n_k - self.offset))
        return slice(lo, hi), slice(lo + self.offset, hi + self.offset)


# ----------------------------------------------------------------------------- shared helpers


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _prep(x: Tensor, valid: Tensor | None, normalize: bool, ct: torch.dtype) -> Tensor:
    """Cast to the compute dtype, zero removed rows, L2-normalise (safely)."""
    x = x.to(ct)
    if valid is not None:
        x = x.where(valid[:, None], 0.0)
    if normalize:
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(NORM_EPS)
    return x


def _prep_backward(x: Tensor, valid: Tensor | None, normalize: bool, xh: Tensor,
                   grad: Tensor) -> Tensor:
    """Gradient of :func:`_prep` with respect to ``x`` (in ``x.dtype``), given ``xh = _prep(x)``
    and the gradient with respect to ``xh``. Works in place on ``grad`` (no (B, D) temporaries
    beyond the result, which matters at large B)."""
    if normalize:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=grad.dtype)  # (B, 1)
        proj = torch.linalg.vecdot(xh, grad, dim=1).unsqueeze(1)  # (B, 1)
        proj = proj.where(norm > NORM_EPS, 0.0)  # clamped norm: the projection term vanishes
        grad.addcmul_(xh, proj, value=-1.0).div_(norm.clamp_min(NORM_EPS))
    if valid is not None:  # removed rows (whose values may be anything) get no gradient
        grad = grad.where(valid[:, None], 0.0)
    return grad.to(x.dtype)


def _scale_grad(dq: Tensor, qh: Tensor) -> Tensor:
    """``sum(dq * qh)`` without a (B, D) temporary, summed over rows in float64."""
    return torch.linalg.vecdot(dq, qh, dim=1).double().sum()


def _tiles(n: int, t: int) -> list[tuple[int, int]]:
    return [(i, min(i + t, n)) for i in range(0, n, t)]


def _valid_tile(vq: Tensor | None, vk: Tensor | None, i0: int, i1: int, j0: int,
                j1: int) -> Tensor | None:
    if vq is None and vk is None:
        return None
    if vq is None:
        assert vk is not None
        return vk[None, j0:j1].expand(i1 - i0, j1 - j0)
    if vk is None:
        return vq[i0:i1, None].expand(i1 - i0, j1 - j0)
    return vq[i0:i1, None] & vk[None, j0:j1]


def _neg_inf_safe(n: Tensor) -> Tensor:
    """-inf (no negatives) -> +inf, so that ``exp(L - n)`` is 0 there instead of inf."""
    return n.where(n > _NEG_INF, float("inf"))


# ----------------------------------------------------------------------------- InfoNCE, dense


def _one_way_dense(logits: Tensor, pos: Tensor, valid: Tensor | None, eps: float
                   ) -> tuple[Tensor, Tensor]:
    """Per-anchor InfoNCE terms of a (Q, K) logit matrix and the positive counts."""
    if valid is not None:
        pos = pos & valid
        neg = ~pos & valid
    else:
        neg = ~pos
    count = pos.sum(1)
    has_neg = neg.any(1)
    # rows without any negative: logsumexp over a row of zeros, then replaced by -inf; this
    # keeps logsumexp's backward free of exp(-inf - -inf) = NaN.
    fill = torch.where(has_neg, _NEG_INF, 0.0)[:, None]
    lse_neg = torch.logsumexp(logits.where(neg, fill), dim=1).where(has_neg, _NEG_INF)  # (Q,)
    per_pos = F.softplus(lse_neg[:, None] - logits)  # -log(e^L / (e^L + e^N))
    term = per_pos.where(pos, 0.0).sum(1) / count.clamp_min(1)
    if eps > 0:
        keep = torch.ones_like(pos) if valid is None else valid
        has_any = keep.any(1)
        fill = torch.where(has_any, _NEG_INF, 0.0)[:, None]
        lse_all = torch.logsumexp(logits.where(keep, fill), dim=1)
        mean_all = logits.where(keep, 0.0).sum(1) / keep.sum(1).clamp_min(1)
        term = (1 - eps) * term + eps * (lse_all - mean_all)
    return term.where(count > 0, 0.0), count.to(logits.dtype)


def _info_nce_dense(q: Tensor, k: Tensor, scale: Tensor, pairs: _Pairs, vq: Tensor | None,
                    vk: Tensor | None, eps: float, rows: bool, cols: bool, normalize: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ct = _compute_dtype(q.dtype, k.dtype, scale.dtype)
    qh, kh = _prep(q, vq, normalize, ct), _prep(k, vk, normalize, ct)
    logits = scale.to(ct) * (qh @ kh.t())  # (Q, K)
    pos = pairs.dense(q.device)
    valid = _valid_tile(vq, vk, 0, q.shape[0], 0, k.shape[0])
    empty_q, empty_k = logits.new_zeros(q.shape[0]), logits.new_zeros(k.shape[0])
    lr, nr = _one_way_dense(logits, pos, valid, eps) if rows else (empty_q, empty_q)
    if cols:
        lc, nc = _one_way_dense(logits.t(), pos.t(), None if valid is None else valid.t(), eps)
    else:
        lc, nc = empty_k, empty_k
    return lr, nr, lc, nc


# ----------------------------------------------------------------------------- InfoNCE, tiled


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
        grad_scale = _scale_grad(dq, qh).to(scale.dtype) if ctx.needs_input_grad[2] else None
        norm = cfg["normalize"]
        grad_q = _prep_backward(q, vq, norm, qh, dq.mul_(s)) if ctx.needs_input_grad[0] else None
        grad_k = _prep_backward(k, vk, norm, kh, dk) if ctx.needs_input_grad[1] else None
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


# ----------------------------------------------------------------------------- validation


class _Inputs(NamedTuple):
    pairs: _Pairs
    weights: Tensor | None
    valid: Tensor | None


def _check_pair_inputs(a: object, b: object, positives: object, weights: object, *,
                       owner: object) -> _Inputs:
    """Validate paired embeddings, positives and weights; build the positive-pair spec."""
    dims = check_tensor(a, "B D", owner=owner, arg="a")
    check_tensor(b, "B D", owner=owner, arg="b", B=dims["B"], D=dims["D"])
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    n = dims["B"]
    if n == 0:
        raise ValueError(
            f"{owner_name(owner)}: expected `a` and `b` with at least one row (B >= 1), "
            f"got {format_shape(a.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"{owner_name(owner)}: expected `b` on {a.device} like `a`, got {b.device}.")
    pairs = _check_positives(positives, n, n, owner=owner)
    w, valid = _check_weights(weights, n, owner=owner)
    return _Inputs(pairs, w, valid)


def _check_positives(positives: object, n_q: int, n_k: int, *, owner: object,
                     groups_k: Tensor | None = None) -> _Pairs:
    if positives is None:
        return _Pairs("diag", n_q, n_k)
    if not isinstance(positives, Tensor):
        raise TypeError(
            f"{owner_name(owner)}: expected `positives` to be a (B,) tensor of group ids or a "
            f"(B, B) bool tensor, got {type(positives).__name__}."
        )
    if positives.dim() == 1:
        if positives.is_floating_point() or positives.is_complex() or positives.dtype == torch.bool:
            raise TypeError(
                f"{owner_name(owner)}: expected `positives` of shape (B,) to hold integer group "
                f"ids, got {positives.dtype}."
            )
        check_tensor(positives, "B", owner=owner, arg="positives", floating=None, B=n_q)
        return _Pairs("group", n_q, n_k, gq=positives,
                      gk=positives if groups_k is None else groups_k)
    check_tensor(positives, "B M", owner=owner, arg="positives", floating=False, B=n_q, M=n_k)
    return _Pairs("matrix", n_q, n_k, matrix=positives)


def _check_weights(weights: object, n: int, *, owner: object) -> tuple[Tensor | None,
                                                                       Tensor | None]:
    if weights is None:
        return None, None
    check_tensor(weights, "B", owner=owner, arg="weights", floating=None, B=n)
    assert isinstance(weights, Tensor)
    if weights.dtype == torch.bool:
        return weights, weights
    if not weights.is_floating_point():
        raise TypeError(
            f"{owner_name(owner)}: expected `weights` to be a floating or bool tensor, "
            f"got {weights.dtype}."
        )
    return weights, weights != 0


def _tile_size(chunk_size: object, n_q: int, n_k: int, *, owner: object) -> int | None:
    """The tile size to use, or None for the dense path."""
    if chunk_size is None or chunk_size == "auto":
        return DEFAULT_TILE if max(n_q, n_k) > DEFAULT_TILE else None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(
            f"{owner_name(owner)}: expected `chunk_size` to be a positive int, 'auto' or None, "
            f"got {chunk_size!r}."
        )
    return chunk_size


def _as_scale(temperature: float | Tensor, *, owner: object, like: Tensor) -> Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"{owner_name(owner)}: expected `temperature` to be a number or a one-element "
                f"tensor, got shape {format_shape(temperature.shape)}."
            )
        return temperature.reshape(()).reciprocal()
    check_positive(temperature, owner=owner, arg="temperature")
    return torch.tensor(1.0 / float(temperature), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- public: InfoNCE


class InfoNCETerms(NamedTuple):
    """Per-anchor InfoNCE terms (float32 or float64) and positive counts per anchor."""

    rows: Tensor
    row_positives: Tensor
    cols: Tensor
    col_positives: Tensor


def info_nce_terms(
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    pairs: Any,
    *,
    q_valid: Tensor | None = None,
    k_valid: Tensor | None = None,
    label_smoothing: float = 0.0,
    rows: bool = True,
    cols: bool = True,
    normalize: bool = True,
    tile: int | None = None,
) -> InfoNCETerms:
    """Unweighted per-anchor InfoNCE terms of a (Q, K) block: the building block of
    :func:`info_nce` and of the gathered loss in :mod:`mmfuse.distributed`.

    ``pairs`` is the internal positive-pair spec (see :func:`make_pairs`). Rows are anchors
    against the kept keys (``rows=True``); columns are anchors against the kept queries.
    ``tile=None`` uses the dense formulation.
    """
    if tile is None:
        return InfoNCETerms(*_info_nce_dense(q, k, scale, pairs, q_valid, k_valid,
                                             label_smoothing, rows, cols, normalize))
    cfg = {"pairs": pairs, "vq": q_valid, "vk": k_valid, "eps": float(label_smoothing),
           "tile": int(tile), "rows": rows, "cols": cols, "normalize": normalize}
    return InfoNCETerms(*_TiledInfoNCE.apply(q, k, scale, cfg))


def make_pairs(n_q: int, n_k: int, *, offset: int = 0, groups_q: Tensor | None = None,
               groups_k: Tensor | None = None, matrix: Tensor | None = None) -> _Pairs:
    """Positive-pair spec for :func:`info_nce_terms`: diagonal ``j = i + offset`` by default,
    equal group ids when ``groups_q``/``groups_k`` are given, or an explicit bool matrix."""
    if matrix is not None:
        return _Pairs("matrix", n_q, n_k, matrix=matrix)
    if groups_q is not None and groups_k is not None:
        return _Pairs("group", n_q, n_k, gq=groups_q, gk=groups_k)
    return _Pairs("diag", n_q, n_k, offset=offset)


def _weighted_mean(terms: Tensor, count: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """(numerator, denominator) of the weighted mean over anchors that have a positive."""
    w = torch.ones_like(terms) if weights is None else weights.to(terms.dtype)
    w = w.where(count > 0, 0.0)
    return (w * terms).sum(), w.sum()


def _info_nce(
    a: Tensor,
    b: Tensor,
    scale: Tensor,
    *,
    normalize: bool,
    positives: Tensor | None,
    weights: Tensor | None,
    label_smoothing: float,
    direction: str,
    chunk_size: int | str | None,
    owner: object,
) -> Tensor:
    """:func:`info_nce` with the logit scale given directly (as the modules store it)."""
    inp = _check_pair_inputs(a, b, positives, weights, owner=owner)
    check_choice(direction, ("both", "a2b", "b2a"), owner=owner, arg="direction")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(
            f"{owner_name(owner)}: expected `label_smoothing` in [0, 1], got {label_smoothing!r}."
        )
    n = a.shape[0]
    tile = _tile_size(chunk_size, n, n, owner=owner)
    rows, cols = direction in ("both", "a2b"), direction in ("both", "b2a")
    t = info_nce_terms(a, b, scale, inp.pairs, q_valid=inp.valid, k_valid=inp.valid,
                       label_smoothing=float(label_smoothing), rows=rows, cols=cols,
                       normalize=normalize, tile=tile)
    parts = []
    if rows:
        num, den = _weighted_mean(t.rows, t.row_positives, inp.weights)
        parts.append(num / den.clamp_min(torch.finfo(num.dtype).tiny))
    if cols:
        num, den = _weighted_mean(t.cols, t.col_positives, inp.weights)
        parts.append(num / den.clamp_min(torch.finfo(num.dtype).tiny))
    loss = parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2
    return loss.to(torch.promote_types(torch.promote_types(a.dtype, b.dtype), scale.dtype))


def info_nce(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor = 0.07,
    normalize: bool = True,
    positives: Tensor | None = None,
    weights: Tensor | None = None,
    logit_bias: float | Tensor | None = None,
    label_smoothing: float = 0.0,
    direction: str = "both",
    chunk_size: int | str | None = None,
) -> Tensor:
    """Symmetric InfoNCE between paired embeddings (CLIP's loss; the source's contrastive loss).

    ``logits = <a_i, b_j> / temperature``; cross-entropy of each ``a_i`` against all ``b`` and
    of each ``b_j`` against all ``a``, averaged (``direction="both"``).

    Args:
        a: Embeddings of the first modality, pairs with ``b`` row by row.
        b: Embeddings of the second modality.
        temperature: Softmax temperature; a number or a one-element tensor (differentiable).
        normalize: L2-normalise ``a`` and ``b`` first (a zero vector maps to zero, see
            :data:`NORM_EPS`).
        positives: None (row i pairs with row i), a (B,) integer tensor of group ids (same id =
            positive pair), or a (B, B) bool matrix (True = positive pair). Positives are never
            counted as negatives; each anchor's loss is the mean over its positives.
            An anchor without any positive is left out of the mean.
        weights: (B,) float or bool. Anchor i's loss is weighted by ``weights[i]``; a sample with
            weight 0 (or False) is removed entirely: it is neither an anchor nor a candidate
            (positive or negative) for anyone, so its values do not matter. Non-negative.
        logit_bias: A scalar added to every logit. InfoNCE is invariant to it (softmax is), so
            it changes nothing; accepted so that a SigLIP-style ``(scale, bias)`` pair can be
            passed to either loss. Its gradient is exactly zero.
        label_smoothing: As in :func:`torch.nn.functional.cross_entropy`: the target puts
            ``label_smoothing`` uniformly over the kept candidates.
        direction: ``"both"`` (mean of the two directions), ``"a2b"`` or ``"b2a"``.
        chunk_size: None or ``"auto"``: tiled when B > :data:`DEFAULT_TILE`, dense otherwise;
            an int: always tiled, with tiles of that many rows and columns.

    Returns:
        The scalar loss, in the promoted dtype of ``a``, ``b`` and a tensor ``temperature``
        (computed in float32, or float64 for float64 inputs). If no anchor has a positive
        (everything removed), the loss is 0.

    Shape:
        - a, b: (B, D), B >= 1
        - positives: (B,) integer or (B, B) bool; weights: (B,)
        - output: () scalar

    Example:
        >>> a, b = torch.randn(8, 16), torch.randn(8, 16)
        >>> info_nce(a, b, temperature=0.1).shape
        torch.Size([])
    """
    owner = "info_nce"
    if isinstance(a, Tensor):
        scale = _as_scale(temperature, owner=owner, like=a)
    else:
        scale = torch.ones(())
    loss = _info_nce(a, b, scale, normalize=normalize, positives=positives, weights=weights,
                     label_smoothing=label_smoothing, direction=direction,
                     chunk_size=chunk_size, owner=owner)
    if isinstance(logit_bias, Tensor) and logit_bias.requires_grad:
        loss = loss + 0.0 * logit_bias.sum()  # no effect on the value; a zero gradient
    return loss


# ----------------------------------------------------------------------------- SigLIP


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
    """Per-row SigLIP sums in tiles; backward recomputes the tiles (memory O(B * tile))."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, scale: Tensor, bias: Tensor,
                cfg: dict[str, Any]) -> Tensor:
        pairs: _Pairs = cfg["pairs"]
        vq, vk, tile = cfg["vq"], cfg["vk"], cfg["tile"]
        ct = _compute_dtype(q.dtype, k.dtype, scale.dtype, bias.dtype)
        s, beta = scale.detach().to(ct), bias.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        out = qh.new_zeros(n_q)
        for i0, i1 in _tiles(n_q, tile):
            qs = qh[i0:i1] * s
            for j0, j1 in _tiles(n_k, tile):
                lt = torch.addmm(beta, qs, kh[j0:j1].t())  # (t, t)
                pos = pairs.tile(i0, i1, j0, j1, qh.device)
                # softplus(-L) on positives, softplus(L) on negatives
                per = F.softplus(lt if pos is None else torch.where(pos, -lt, lt))
                valid = _valid_tile(vq, vk, i0, i1, j0, j1)
                if valid is not None:
                    per = per.where(valid, 0.0)
                out[i0:i1] += per.sum(1)
        ctx.save_for_backward(q, k, scale, bias)
        ctx.cfg, ctx.ct = cfg, ct
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        q, k, scale, bias = ctx.saved_tensors
        cfg, ct = ctx.cfg, ctx.ct
        pairs: _Pairs = cfg["pairs"]
        vq, vk, tile = cfg["vq"], cfg["vk"], cfg["tile"]
        s, beta = scale.detach().to(ct), bias.detach().to(ct)
        qh, kh = _prep(q, vq, cfg["normalize"], ct), _prep(k, vk, cfg["normalize"], ct)
        n_q, n_k = qh.shape[0], kh.shape[0]
        g = g.to(ct)
        dq, dk = torch.zeros_like(qh), torch.zeros_like(kh)
        dbias = qh.new_zeros((), dtype=torch.float64)
        for i0, i1 in _tiles(n_q, tile):
            qs = qh[i0:i1] * s
            for j0, j1 in _tiles(n_k, tile):
                gt = torch.addmm(beta, qs, kh[j0:j1].t()).sigmoid_()  # d softplus(L) / dL
                pos = pairs.tile(i0, i1, j0, j1, qh.device)
                if pos is not None:
                    gt.sub_(pos.to(ct))  # d softplus(-L) / dL = sigmoid(L) - 1
                valid = _valid_tile(vq, vk, i0, i1, j0, j1)
                if valid is not None:
                    gt = gt.where(valid, 0.0)
                gt.mul_(g[i0:i1, None])
                dbias += gt.sum(dtype=torch.float64)
                dq[i0:i1].addmm_(gt, kh[j0:j1])
                dk[j0:j1].addmm_(gt.t(), qs)
        grad_scale = _scale_grad(dq, qh).to(scale.dtype) if ctx.needs_input_grad[2] else None
        grad_bias = dbias.to(bias.dtype) if ctx.needs_input_grad[3] else None
        norm = cfg["normalize"]
        grad_q = _prep_backward(q, vq, norm, qh, dq.mul_(s)) if ctx.needs_input_grad[0] else None
        grad_k = _prep_backward(k, vk, norm, kh, dk) if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, grad_scale, grad_bias, None


def _siglip(
    a: Tensor,
    b: Tensor,
    scale: Tensor,
    bias: Tensor,
    *,
    normalize: bool,
    positives: Tensor | None,
    weights: Tensor | None,
    chunk_size: int | str | None,
    owner: object,
) -> Tensor:
    """:func:`siglip_loss` with the scale and bias as tensors (as the module stores them)."""
    inp = _check_pair_inputs(a, b, positives, weights, owner=owner)
    n = a.shape[0]
    tile = _tile_size(chunk_size, n, n, owner=owner)
    if tile is None:
        per_row = _siglip_dense(a, b, scale, bias, inp.pairs, inp.valid, inp.valid, normalize)
    else:
        cfg = {"pairs": inp.pairs, "vq": inp.valid, "vk": inp.valid, "tile": tile,
               "normalize": normalize}
        per_row = _TiledSigLIP.apply(a, b, scale, bias, cfg)
    w = torch.ones_like(per_row) if inp.weights is None else inp.weights.to(per_row.dtype)
    loss = (w * per_row).sum() / w.sum().clamp_min(torch.finfo(per_row.dtype).tiny)
    out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype),
                                    torch.promote_types(scale.dtype, bias.dtype))
    return loss.to(out_dtype)


def _as_tensor(x: float | Tensor, *, owner: object, arg: str, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(
                f"{owner_name(owner)}: expected `{arg}` to be a number or a one-element tensor, "
                f"got shape {format_shape(x.shape)}."
            )
        return x.reshape(())
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{owner_name(owner)}: expected `{arg}` to be a finite number, got {x!r}.")
    return torch.tensor(float(x), dtype=like.dtype, device=like.device)


def siglip_loss(
    a: Tensor,
    b: Tensor,
    *,
    scale: float | Tensor = 10.0,
    bias: float | Tensor = -10.0,
    normalize: bool = True,
    positives: Tensor | None = None,
    weights: Tensor | None = None,
    chunk_size: int | str | None = None,
) -> Tensor:
    """Pairwise sigmoid loss (SigLIP, Zhai et al., 2023).

    Every pair (i, j) is a binary problem: ``logit = scale * <a_i, b_j> + bias``, label 1 for
    positive pairs and 0 otherwise; the loss is the sum over pairs divided by the number of
    anchors (the paper's normalisation).

    Args:
        a: Embeddings of the first modality, paired with ``b`` row by row.
        b: Embeddings of the second modality.
        scale: Logit scale (the paper starts at 10); a number or a one-element tensor.
        bias: Logit bias (the paper starts at -10); a number or a one-element tensor.
        normalize: L2-normalise ``a`` and ``b`` first.
        positives: None (row i pairs with row i), (B,) integer group ids, or a (B, B) bool
            matrix of positive pairs.
        weights: (B,) float or bool: anchor weights; a sample with weight 0 is removed from
            every pair it takes part in. Non-negative.
        chunk_size: As in :func:`info_nce`. The tiled path keeps O(B * tile) memory in the
            forward and the backward.

    Returns:
        The scalar loss in the promoted dtype of the inputs and tensor parameters.

    Shape:
        - a, b: (B, D), B >= 1
        - output: () scalar

    Example:
        >>> siglip_loss(torch.randn(8, 16), torch.randn(8, 16)).shape
        torch.Size([])
    """
    owner = "siglip_loss"
    like = a if isinstance(a, Tensor) else torch.ones(())
    s = _as_tensor(scale, owner=owner, arg="scale", like=like)
    t = _as_tensor(bias, owner=owner, arg="bias", like=like)
    return _siglip(a, b, s, t, normalize=normalize, positives=positives, weights=weights,
                   chunk_size=chunk_size, owner=owner)
