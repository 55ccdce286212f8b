"""InfoNCE on the full (Q, K) logit matrix, differentiated by autograd (private)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import _NEG_INF, _compute_dtype, _prep, _valid_tile
from ._pairs import _Pairs

__all__ = ["_info_nce_dense"]


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
