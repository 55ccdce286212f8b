"""Per-row SigLIP sums, dense (autograd) and tiled (recomputing backward) (private)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._contrastive_common import (
    _compute_dtype,
    _embedding_grads,
    _prep,
    _tiles,
    _valid_tile,
)
from ._contrastive_pairs import _Pairs

__all__ = ["_TiledSigLIP", "_siglip_dense"]


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
        grad_bias = dbias.to(bias.dtype) if ctx.needs_input_grad[3] else None
        grad_q, grad_k, grad_scale = _embedding_grads(
            ctx.needs_input_grad, q, k, scale, s, qh, kh, dq, dk, vq, vk, cfg["normalize"])
        return grad_q, grad_k, grad_scale, grad_bias, None
