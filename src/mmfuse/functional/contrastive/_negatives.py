"""InfoNCE against explicit negative keys (private; public through ``info_nce(negatives=)``).

For query ``a_i``, its positive key ``b_i`` and negative keys ``n_m`` (shared, (M, D), or its
own, (B, M, D)), with ``L_p = s <a_i, b_i>`` and ``L_m = s <a_i, n_m>``:
``loss_i = -log(e^{L_p} / (e^{L_p} + sum_m e^{L_m})) = softplus(logsumexp_m L_m - L_p)``,
the cross-entropy over [positive, negatives] with the positive at index 0 (as the
info-nce-pytorch package defines it). The other rows of ``b`` are not negatives here.

Shared negatives are a (B, M) problem: the log-sum-exp over them runs in tiles through
:class:`~mmfuse.functional.contrastive._rows._TiledRows` (memory O((B + M) * D + tile^2)).
Per-sample negatives already hold B * M * D numbers; their (B, M) logits, a factor D smaller,
are computed directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_tensor, owner_name
from ._common import _compute_dtype, _prep
from ._rows import _rows

__all__ = ["_check_negatives", "_info_nce_negatives"]


def _check_negatives(negatives: object, a: Tensor, positives: object, direction: str, *,
                     owner: object) -> Tensor:
    if isinstance(negatives, Tensor) and negatives.dim() == 3:
        check_tensor(negatives, "B M D", owner=owner, arg="negatives", B=a.shape[0],
                     D=a.shape[1])
    else:
        check_tensor(negatives, "M D", owner=owner, arg="negatives", D=a.shape[1])
    assert isinstance(negatives, Tensor)
    if negatives.device != a.device:
        raise ValueError(f"{owner_name(owner)}: expected `negatives` on {a.device} like `a`, "
                         f"got {negatives.device}.")
    if positives is not None:
        raise ValueError(
            f"{owner_name(owner)}: expected `positives=None` with explicit `negatives` (the "
            f"positive of a[i] is b[i]), got a {type(positives).__name__}."
        )
    if direction == "b2a":
        raise ValueError(
            f"{owner_name(owner)}: with explicit `negatives` the loss scores the queries `a`; "
            f"expected `direction` 'both' or 'a2b', got 'b2a'."
        )
    return negatives


def _info_nce_negatives(a: Tensor, b: Tensor, negatives: Tensor, scale: Tensor, *,
                        valid: Tensor | None, normalize: bool, eps: float, tile: int | None
                        ) -> Tensor:
    """Per-query loss against the positive key and the explicit negatives, (B,)."""
    ct = _compute_dtype(a.dtype, b.dtype, negatives.dtype, scale.dtype)
    s = scale.to(ct)
    ah, bh = _prep(a, valid, normalize, ct), _prep(b, valid, normalize, ct)
    lp = s * torch.linalg.vecdot(ah, bh, dim=1)  # (B,) positive logits
    n_neg = negatives.shape[-2]
    if negatives.dim() == 2:
        neg_lse = _rows(a, negatives, scale, pairs=None, self_offset=None, vq=valid, vk=None,
                        normalize=normalize, lse_p=False, tile=tile).lse_c
        sum_neg = s * (ah @ _prep(negatives, None, normalize, ct).sum(0)) if eps > 0 else None
    else:
        if valid is not None:  # a removed sample's negatives may hold anything (NaN)
            negatives = negatives.where(valid[:, None, None], 0.0)
        flat = negatives.reshape(-1, negatives.shape[-1])  # (B * M, D)
        nh = _prep(flat, None, normalize, ct).view(negatives.shape)  # (B, M, D)
        logits = s * torch.einsum("bd,bmd->bm", ah, nh)  # (B, M)
        neg_lse = torch.logsumexp(logits, dim=1)
        sum_neg = logits.sum(1)
    term = F.softplus(neg_lse - lp)
    if eps > 0:
        assert sum_neg is not None
        lse_all = torch.logaddexp(neg_lse, lp)
        term = (1 - eps) * term + eps * (lse_all - (lp + sum_neg) / (n_neg + 1))
    return term if valid is None else term.where(valid, 0.0)
