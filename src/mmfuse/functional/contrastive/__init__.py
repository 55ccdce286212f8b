"""Contrastive losses: symmetric InfoNCE (with explicit negatives), the pairwise sigmoid
(SigLIP) loss, and the self-contrast losses SupCon and NT-Xent (:mod:`.supcon`).

Both come in two exact formulations that give the same values and gradients:

- a dense one, which builds the (B, B) logit matrix and lets autograd differentiate it;
- a tiled one (a custom :class:`torch.autograd.Function`), which walks the logit matrix in
  (tile x tile) blocks, keeps only per-row and per-column statistics (log-sum-exps over the
  negatives), and recomputes each block in the backward pass. It never holds more than a few
  blocks, so memory grows as O(B * D + tile^2) instead of O(B^2), and its gradients for both
  embeddings, the logit scale and the bias are exact (not a truncated or detached variant).

``chunk_size=None`` (or ``"auto"``) picks the tiled path when either side exceeds
:data:`DEFAULT_TILE` rows, with a tile size chosen from B, D and the thread count; an int
forces it with that tile size.

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

This package's ``__init__`` holds the public API (and :mod:`.supcon` that of SupCon and
NT-Xent); the formulations live in private modules beside it: ``_dense`` and ``_tiled``
(InfoNCE), ``_siglip`` (SigLIP, both paths), ``_rows`` (per-anchor log-sum-exps and sums over
positives, dense or tiled: SupCon and explicit negatives), ``_negatives`` (InfoNCE against
explicit negatives), ``_pairs`` (the positive-pair spec), ``_checks`` (argument validation)
and ``_common`` (the constants and the helpers the losses share).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..._checks import check_choice, owner_name
from ._checks import _as_scale, _as_tensor, _check_pair_inputs, _tile_for
from ._common import DEFAULT_TILE, NORM_EPS, REDUCTIONS, _anchor_weights
from ._dense import _info_nce_dense
from ._negatives import _check_negatives, _info_nce_negatives
from ._pairs import _Pairs
from ._siglip import _siglip_sums
from ._tiled import _TiledInfoNCE
from .supcon import VARIANTS, nt_xent_loss, supcon_loss

__all__ = [
    "DEFAULT_TILE",
    "NORM_EPS",
    "REDUCTIONS",
    "VARIANTS",
    "InfoNCETerms",
    "info_nce",
    "info_nce_terms",
    "make_pairs",
    "nt_xent_loss",
    "siglip_loss",
    "supcon_loss",
]


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


def _chunk(chunk_size: object, a: Tensor, owner: object) -> int | None:
    """The tile size (None: dense); ``"auto"`` and None pick it from B, D and the threads."""
    return _tile_for(chunk_size, a, a.shape[0], owner=owner)


def _weighted_mean(terms: Tensor, count: Tensor, weights: Tensor | None,
                   reduction: str = "anchor") -> tuple[Tensor, Tensor]:
    """(numerator, denominator) of the weighted mean over anchors that have a positive
    (``reduction="pair"``: each anchor weighted by its number of positives too)."""
    w = _anchor_weights(count.to(terms.dtype), weights, reduction)
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
    negatives: Tensor | None = None,
    reduction: str = "anchor",
) -> Tensor:
    """:func:`info_nce` with the logit scale given directly (as the modules store it)."""
    check_choice(direction, ("both", "a2b", "b2a"), owner=owner, arg="direction")
    check_choice(reduction, REDUCTIONS, owner=owner, arg="reduction")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(
            f"{owner_name(owner)}: expected `label_smoothing` in [0, 1], got {label_smoothing!r}."
        )
    if negatives is not None:
        inp = _check_pair_inputs(a, b, None, weights, owner=owner)
        neg = _check_negatives(negatives, a, positives, direction, owner=owner)
        tile = _tile_for(chunk_size, a, neg.shape[0], owner=owner) \
            if neg.dim() == 2 else None
        per = _info_nce_negatives(a, b, neg, scale, valid=inp.valid, normalize=normalize,
                                  eps=float(label_smoothing), tile=tile)
        num, den = _weighted_mean(per, torch.ones_like(per), inp.weights)
        loss = num / den.clamp_min(torch.finfo(num.dtype).tiny)
        out = torch.promote_types(torch.promote_types(a.dtype, b.dtype), neg.dtype)
        return loss.to(torch.promote_types(out, scale.dtype))
    inp = _check_pair_inputs(a, b, positives, weights, owner=owner)
    tile = _chunk(chunk_size, a, owner)
    rows, cols = direction in ("both", "a2b"), direction in ("both", "b2a")
    t = info_nce_terms(a, b, scale, inp.pairs, q_valid=inp.valid, k_valid=inp.valid,
                       label_smoothing=float(label_smoothing), rows=rows, cols=cols,
                       normalize=normalize, tile=tile)
    parts = []
    if rows:
        num, den = _weighted_mean(t.rows, t.row_positives, inp.weights, reduction)
        parts.append(num / den.clamp_min(torch.finfo(num.dtype).tiny))
    if cols:
        num, den = _weighted_mean(t.cols, t.col_positives, inp.weights, reduction)
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
    negatives: Tensor | None = None,
    reduction: str = "anchor",
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
        chunk_size: None or ``"auto"``: tiled when B > :data:`DEFAULT_TILE` (on CPU tiles
            of about ``sqrt(2**26 / D)`` rows, at most B / threads; elsewhere
            :data:`DEFAULT_TILE`), dense otherwise; an int: always tiled, with tiles of that
            many rows and columns.
        negatives: Explicit negative keys (the info-nce-pytorch interface): (M, D) shared by
            every query, or (B, M, D), each query's own. Then each ``a_i`` is scored against
            its positive ``b_i`` and the negatives only, ``-log(e^{L_ii} / (e^{L_ii} +
            sum_m e^{<a_i, n_m> s}))`` (the other rows of ``b`` are not negatives), in the
            query direction only (``direction`` "both" or "a2b"); ``positives`` must be None.
            Shared negatives are tiled over M like the batch (``chunk_size``).
        reduction: With several positives per anchor: ``"anchor"`` (each anchor's loss is the
            mean over its positives, then the weighted mean over anchors) or ``"pair"`` (the
            mean over every (anchor, positive) pair, as pytorch-metric-learning's NTXentLoss
            averages). The same with one positive per anchor.

    Returns:
        The scalar loss, in the promoted dtype of ``a``, ``b`` and a tensor ``temperature``
        (computed in float32, or float64 for float64 inputs). If no anchor has a positive
        (everything removed), the loss is 0.

    Shape:
        - a, b: (B, D), B >= 1
        - positives: (B,) integer or (B, B) bool; weights: (B,)
        - negatives: (M, D) or (B, M, D)
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
                     chunk_size=chunk_size, owner=owner, negatives=negatives,
                     reduction=reduction)
    if isinstance(logit_bias, Tensor) and logit_bias.requires_grad:
        loss = loss + 0.0 * logit_bias.sum()  # no effect on the value; a zero gradient
    return loss


# ----------------------------------------------------------------------------- SigLIP


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
    num, den = _siglip_sums(a, b, scale, bias, pairs=inp.pairs, vq=inp.valid, vk=inp.valid,
                            tile=_chunk(chunk_size, a, owner), normalize=normalize,
                            weights=inp.weights)
    loss = num / den.clamp_min(torch.finfo(num.dtype).tiny)
    out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype),
                                    torch.promote_types(scale.dtype, bias.dtype))
    return loss.to(out_dtype)


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
