"""Masked cross-attention and pooling for token-level fusion.

Token masks are ``torch.bool`` with True = keep (a valid token), as in
:func:`torch.nn.functional.scaled_dot_product_attention`; this is the opposite of
:class:`torch.nn.MultiheadAttention`'s ``key_padding_mask`` (True = ignore).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_inputs, check_mask, check_tensor

__all__ = ["masked_cross_attention", "masked_mean"]


def masked_cross_attention(
    query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor, *, dropout_p: float = 0.0
) -> Tensor:
    """Scaled dot-product attention of queries over the kept keys, safe for empty key sets.

    A sample whose keys are all masked would get a softmax over nothing (NaN from
    ``scaled_dot_product_attention`` on some backends and versions); its output is zero
    instead, on every backend, and its masked keys' values reach neither the output nor the
    gradient.

    Shape:
        - query: (B, H, Nq, d); key, value: (B, H, Nk, d); key_mask: (B, Nk) bool, True = keep
        - output: (B, H, Nq, d), zero for a sample with no kept key
    """
    owner = "masked_cross_attention"
    n = check_tensor(query, "B H L d", owner=owner, arg="query")
    kn = check_tensor(key, "B H N d", owner=owner, arg="key", B=n["B"], H=n["H"], d=n["d"])
    check_tensor(value, "B H N e", owner=owner, arg="value", B=n["B"], H=n["H"], N=kn["N"])
    check_mask(key_mask, owner=owner, arg="key_mask", B=n["B"], N=kn["N"], device=query.device)
    check_inputs(None, {"query": query, "key": key, "value": value}, owner=owner)
    has_key = key_mask.any(dim=-1)  # (B,)
    safe = key_mask | ~has_key.unsqueeze(-1)  # (B, Nk): empty rows attend to everything
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=safe[:, None, None, :], dropout_p=dropout_p
    )  # (B, H, Nq, d)
    return out.where(has_key[:, None, None, None], 0.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the kept tokens; zero for a sample with no kept token.

    Shape:
        - x: (B, N, D); mask: (B, N) bool, True = keep
        - output: (B, D)
    """
    n = check_tensor(x, "B N D", owner="masked_mean", arg="x")
    check_mask(mask, owner="masked_mean", arg="mask", B=n["B"], N=n["N"], device=x.device)
    keep = mask.unsqueeze(-1)  # (B, N, 1)
    total = x.where(keep, 0.0).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
    return total / count
