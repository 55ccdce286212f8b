"""Set-level fusion math: pooling over the observed modalities (Deep Sets) and the non-local
gate (a query modality attending over the others' tokens)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_choice, check_mask, check_tensor
from .feature import _masked_softmax

__all__ = ["SET_POOLS", "nl_gate", "set_pool"]

SET_POOLS = ("sum", "mean", "max")


def set_pool(values: Tensor, observed: Tensor | None, reduce: str = "sum") -> Tensor:
    """Pool per-modality vectors over the observed modalities: a symmetric function of the set.

    ``"sum"`` and ``"mean"`` add (and average) the observed rows; ``"max"`` takes the
    feature-wise maximum over them. The result does not depend on the order of the M axis, nor
    on the values of unobserved entries (not even NaN), and no gradient reaches them. A row with
    nothing observed pools to zeros (the empty set).

    Args:
        values: One vector per sample and modality.
        observed: True where the modality was observed; None when all are.
        reduce: ``"sum"``, ``"mean"`` or ``"max"``.

    Shape:
        - values: (B, M, D); observed: (B, M) bool or None
        - output: (B, D)

    Example:
        >>> v = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
        >>> set_pool(v, torch.tensor([[True, False, True]]), "mean")
        tensor([[3., 4.]])
    """
    owner = "set_pool"
    n = check_tensor(values, "B M D", owner=owner, arg="values")
    check_mask(observed, owner=owner, arg="observed", layout="B M", B=n["B"], M=n["M"],
               device=values.device)
    check_choice(reduce, SET_POOLS, owner=owner, arg="reduce")
    return _set_pool(values, observed, reduce)


def _set_pool(values: Tensor, observed: Tensor | None, reduce: str) -> Tensor:
    """:func:`set_pool` without the boundary checks (callers have checked)."""
    if observed is None:
        if reduce == "sum":
            return values.sum(dim=1)
        if reduce == "mean":
            return values.mean(dim=1)
        return values.amax(dim=1)
    keep = observed.unsqueeze(-1)  # (B, M, 1)
    if reduce == "max":
        lowest = torch.finfo(values.dtype).min
        pooled = values.where(keep, lowest).amax(dim=1)  # (B, D)
        return pooled.where(observed.any(dim=1, keepdim=True), 0.0)
    total = values.where(keep, 0.0).sum(dim=1)  # (B, D)
    if reduce == "sum":
        return total
    count = observed.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
    return total / count.to(values.dtype)


def nl_gate(query: Tensor, keys: Tensor, values: Tensor, observed: Tensor | None) -> Tensor:
    """Non-local gate (Wang et al., 2020, "What makes training multi-modal classification
    networks hard?", appendix F4): the query tokens attend over the key tokens and the attended
    values are added back to the query.

    ``flatten(q + softmax(q @ k) @ v)``: the logits are not scaled, and the softmax runs over
    the observed key tokens only (an unobserved token gets weight 0 and its value is never
    read). A row with no observed key token returns its flattened query.

    Args:
        query: Q query tokens of C channels.
        keys: Keys laid out channels first, (C, K) per sample.
        values: Values laid out tokens first, (K, C) per sample.
        observed: True where a key token's modality was observed; None when all are.

    Shape:
        - query: (B, Q, C); keys: (B, C, K); values: (B, K, C); observed: (B, K) bool or None
        - output: (B, Q * C), query token-major (the flattened ``(B, Q, C)``)

    Example:
        >>> q, k, v = torch.zeros(1, 2, 3), torch.zeros(1, 3, 4), torch.ones(1, 4, 3)
        >>> nl_gate(q, k, v, None)  # zero logits: each query gets the mean value
        tensor([[1., 1., 1., 1., 1., 1.]])
    """
    owner = "nl_gate"
    n = check_tensor(query, "B Q C", owner=owner, arg="query")
    k = check_tensor(keys, "B C K", owner=owner, arg="keys", B=n["B"], C=n["C"])
    check_tensor(values, "B K C", owner=owner, arg="values", B=n["B"], K=k["K"], C=n["C"])
    check_mask(observed, owner=owner, arg="observed", layout="B K", B=n["B"], K=k["K"],
               device=query.device)
    return _nl_gate(query, keys, values, observed)


def _nl_gate(query: Tensor, keys: Tensor, values: Tensor, observed: Tensor | None) -> Tensor:
    """:func:`nl_gate` without the boundary checks (callers have checked)."""
    logits = query @ keys  # (B, Q, K)
    if observed is None:
        attended = torch.softmax(logits, dim=-1) @ values  # (B, Q, C)
    else:
        weights = _masked_softmax(logits, observed.unsqueeze(1), -1)  # (B, Q, K)
        attended = weights @ values.where(observed.unsqueeze(-1), 0.0)  # (B, Q, C)
    return (query + attended).flatten(1)  # (B, Q * C)
