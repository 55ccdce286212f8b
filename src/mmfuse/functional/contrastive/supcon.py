"""Supervised contrastive loss (Khosla et al., 2020) and NT-Xent (SimCLR, Chen et al., 2020).

Self-contrast: every embedding is an anchor against every *other* embedding of the batch (its
own row is never a candidate). With ``z`` L2-normalised, ``L[i, j] = <z_i, z_j> / t``, the
candidates ``A(i) = {j != i}`` (kept rows) and the positives ``P(i) = {p in A(i) : y_p = y_i}``,
the paper's two variants are (its equations 2 and 3):

- ``"out"`` (the paper's recommended L_out): the mean over positives outside the log,
  ``l_i = -1/|P(i)| sum_{p in P(i)} log(e^{L[i,p]} / sum_{a in A(i)} e^{L[i,a]})
  = logsumexp_{A(i)} L[i] - mean_{P(i)} L[i]``;
- ``"in"`` (L_in): inside the log,
  ``l_i = -log(1/|P(i)| sum_{p in P(i)} e^{L[i,p]} / sum_{a in A(i)} e^{L[i,a]})
  = logsumexp_{A(i)} L[i] - logsumexp_{P(i)} L[i] + log |P(i)|``.

The denominator runs over *all* other samples, the other positives included (as in the paper
and pytorch-metric-learning's ``SupConLoss``); :func:`~mmfuse.functional.info_nce` with group
``positives`` is the variant whose denominators hold the negatives only. With one positive per
anchor (two views, no labels) both variants are NT-Xent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..._checks import check_choice, check_tensor, format_shape, owner_name
from ...errors import ShapeError
from ._checks import _as_scale, _check_weights, _tile_for
from ._common import REDUCTIONS, _anchor_weights
from ._pairs import _Pairs
from ._rows import RowStats, _rows

__all__ = ["VARIANTS", "nt_xent_loss", "supcon_loss"]

VARIANTS = ("out", "in")
"""The two supervised contrastive losses of Khosla et al. (2020): ``"out"`` (L_out, the mean
over positives outside the log) and ``"in"`` (L_in, inside)."""


class _Flat(NamedTuple):
    """Features flattened to (N, D) rows with group ids, weights and kept rows per row."""

    z: Tensor
    ids: Tensor
    weights: Tensor | None
    valid: Tensor | None
    views: int


def _flatten(features: object, labels: object, weights: object, *, owner: object,
             allow_empty: bool = False) -> _Flat:
    """Validate ``features`` (N, D) with labels (N,), or (B, V, D) with optional labels (B,),
    and flatten the views view-major: row ``v * B + b`` is view v of sample b."""
    if not isinstance(features, Tensor):
        raise TypeError(
            f"{owner_name(owner)}: expected `features` to be a tensor of shape (N, D) or "
            f"(B, V, D), got {type(features).__name__}."
        )
    if features.dim() not in (2, 3):
        raise ShapeError(
            f"{owner_name(owner)}: expected `features` of shape (N, D) with labels, or "
            f"(B, V, D) (V views per sample), got {format_shape(features.shape)}."
        )
    check_tensor(features, "N D" if features.dim() == 2 else "B V D", owner=owner,
                 arg="features")
    n = features.shape[0]
    if n == 0 and not allow_empty:
        raise ValueError(
            f"{owner_name(owner)}: expected `features` with at least one row, "
            f"got {format_shape(features.shape)}."
        )
    if labels is None and features.dim() == 2:
        raise ValueError(
            f"{owner_name(owner)}: expected `labels` of shape (N,) for `features` of shape "
            f"(N, D) (or features of shape (B, V, D): the views of a sample are its "
            f"positives), got None."
        )
    if labels is not None:
        check_tensor(labels, "B", owner=owner, arg="labels", floating=None, B=n)
        assert isinstance(labels, Tensor)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"{owner_name(owner)}: expected `labels` to hold integer class ids, "
                f"got {labels.dtype}."
            )
        if labels.device != features.device:
            raise ValueError(f"{owner_name(owner)}: expected `labels` on {features.device} "
                             f"like `features`, got {labels.device}.")
    w, valid = _check_weights(weights, n, owner=owner)
    if features.dim() == 2:
        assert isinstance(labels, Tensor)
        return _Flat(features, labels, w, valid, 1)
    views = features.shape[1]
    ids = torch.arange(n, device=features.device) if labels is None else labels
    z = features.transpose(0, 1).reshape(views * n, features.shape[2])  # (V * B, D)
    return _Flat(z, ids.repeat(views), None if w is None else w.repeat(views),
                 None if valid is None else valid.repeat(views), views)


def _supcon_terms(st: RowStats, variant: str) -> Tensor:
    """Per-anchor loss from the row statistics; 0 for anchors without a positive."""
    has = st.n_pos > 0
    lse_c = st.lse_c.where(has, 0.0)  # finite everywhere: no inf - inf in unused rows
    if variant == "out":
        term = lse_c - st.sum_p / st.n_pos.clamp_min(1)
    else:
        term = lse_c - st.lse_p.where(has, 0.0) + st.n_pos.clamp_min(1).log()
    return term.where(has, 0.0)


def _check_options(variant: object, reduction: object, *, owner: object) -> None:
    check_choice(variant, VARIANTS, owner=owner, arg="variant")
    check_choice(reduction, REDUCTIONS, owner=owner, arg="reduction")
    if variant == "in" and reduction == "pair":
        raise ValueError(
            f"{owner_name(owner)}: `reduction='pair'` averages a per-pair loss, which only "
            f"`variant='out'` has (L_in takes the log of the mean over positives); "
            f"use reduction='anchor'."
        )


def _supcon(features: Tensor, labels: Tensor | None, scale: Tensor, *, variant: str,
            normalize: bool, weights: Tensor | None, reduction: str,
            chunk_size: int | str | None, owner: object) -> Tensor:
    """:func:`supcon_loss` with the logit scale (1 / temperature) given as a tensor."""
    _check_options(variant, reduction, owner=owner)
    flat = _flatten(features, labels, weights, owner=owner)
    n = flat.z.shape[0]
    tile = _tile_for(chunk_size, flat.z, n, owner=owner)
    st = _rows(flat.z, flat.z, scale, pairs=_Pairs("group", n, n, gq=flat.ids, gk=flat.ids),
               self_offset=0, vq=flat.valid, vk=flat.valid, normalize=normalize,
               lse_p=variant == "in", tile=tile)
    term = _supcon_terms(st, variant)
    w = _anchor_weights(st.n_pos, flat.weights, reduction)
    loss = (w * term).sum() / w.sum().clamp_min(torch.finfo(term.dtype).tiny)
    return loss.to(torch.promote_types(features.dtype, scale.dtype))


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.1,
    variant: str = "out",
    normalize: bool = True,
    weights: Tensor | None = None,
    reduction: str = "anchor",
    chunk_size: int | str | None = None,
) -> Tensor:
    """Supervised contrastive loss (SupCon, Khosla et al., 2020), both of the paper's variants.

    Every embedding is an anchor; its positives are the *other* embeddings with its label (or,
    without labels, the other views of its sample); the softmax runs over every other
    embedding, positives included (see the module docstring for the formulas).

    Args:
        features: (N, D) embeddings with ``labels`` (N,), or (B, V, D): V views of each of B
            samples (the paper's layout), where the views of a sample share its label.
        labels: Integer class ids, (N,) or (B,). None with (B, V, D) features: each sample is
            its own class (self-supervised; with V=2 this is NT-Xent, see :func:`nt_xent_loss`).
        temperature: Softmax temperature (the paper: 0.1); a number or a one-element tensor.
        variant: ``"out"`` (L_out, the paper's choice) or ``"in"`` (L_in).
        normalize: L2-normalise the embeddings first (as the paper does).
        weights: (N,) or (B,) float or bool anchor weights; 0 (False) removes a sample (all its
            views) as anchor and as candidate. Non-negative.
        reduction: How anchors with several positives count: ``"anchor"`` (the paper and
            pytorch-metric-learning's ``SupConLoss``: mean over anchors of each anchor's loss)
            or ``"pair"`` (``variant="out"`` only: mean over (anchor, positive) pairs).
        chunk_size: As in :func:`info_nce`: None/``"auto"`` tiles above 1024 rows (memory
            O(N * D + tile^2) with exact gradients); an int forces tiles of that size.

    Returns:
        The scalar loss in the promoted dtype of ``features`` and a tensor temperature. An
        anchor without a positive (a label seen once, no second view) is left out of the mean;
        if no anchor has one, the loss is 0 with zero gradients (never NaN).

    Shape:
        - features: (N, D) or (B, V, D); labels: (N,) or (B,); weights: as labels
        - output: () scalar

    Example:
        >>> feats, labels = torch.randn(8, 2, 16), torch.randint(0, 3, (8,))
        >>> supcon_loss(feats, labels).shape
        torch.Size([])
    """
    owner = "supcon_loss"
    like = features if isinstance(features, Tensor) else torch.ones(())
    scale = _as_scale(temperature, owner=owner, like=like)
    return _supcon(features, labels, scale, variant=variant, normalize=normalize,
                   weights=weights, reduction=reduction, chunk_size=chunk_size, owner=owner)


def nt_xent_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    normalize: bool = True,
    weights: Tensor | None = None,
    chunk_size: int | str | None = None,
) -> Tensor:
    """NT-Xent (SimCLR, Chen et al., 2020): the 2B views contrasted with each other.

    Each of the 2B embeddings is an anchor whose positive is the other view of its sample and
    whose softmax runs over the 2B - 1 other embeddings (its own row excluded, the other
    ``a`` rows included, unlike the cross-modal :func:`info_nce`); the loss is the mean over
    the 2B anchors. Equal to :func:`supcon_loss` on ``torch.stack([a, b], 1)`` without labels.

    Args:
        a: First views, (B, D).
        b: Second views, (B, D), paired with ``a`` by row.
        temperature: Softmax temperature.
        normalize: L2-normalise first (cosine similarity, as SimCLR).
        weights: (B,) float or bool sample weights; 0 removes a sample.
        chunk_size: As in :func:`supcon_loss`.

    Shape:
        - a, b: (B, D)
        - output: () scalar

    Example:
        >>> nt_xent_loss(torch.randn(8, 16), torch.randn(8, 16)).shape
        torch.Size([])
    """
    owner = "nt_xent_loss"
    dims = check_tensor(a, "B D", owner=owner, arg="a")
    check_tensor(b, "B D", owner=owner, arg="b", B=dims["B"], D=dims["D"])
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    scale = _as_scale(temperature, owner=owner, like=a)
    return _supcon(torch.stack([a, b], 1), None, scale, variant="out", normalize=normalize,
                   weights=weights, reduction="anchor", chunk_size=chunk_size, owner=owner)
