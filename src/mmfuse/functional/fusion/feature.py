"""Feature-level fusion math: presence-aware softmax, gated mixing, tensor products, pooling.

Every function takes already-projected per-modality tensors and an ``observed`` (B, M) bool
matrix (True = the modality was observed for that sample, columns in the module's declared
order). The modules in :mod:`mmfuse.fusion` own the parameters and call these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import (
    check_broadcastable,
    check_floating,
    check_mask,
    check_positive,
    check_probability,
    check_same_device,
    check_size,
    check_tensor,
)

__all__ = [
    "attention_fusion",
    "bilinear_pool",
    "film",
    "gated_fusion",
    "low_rank_tensor_fusion",
    "masked_softmax",
    "signed_sqrt",
    "tensor_fusion",
]


def masked_softmax(scores: Tensor, observed: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over the entries where ``observed`` is True; zero elsewhere.

    A slice with nothing observed gives all zeros (never NaN). No gradient reaches the scores
    of unobserved entries.

    Shape:
        - scores: any; observed: bool, broadcastable to ``scores``
        - output: like ``scores``; sums to 1 along ``dim`` where anything is observed
    """
    owner = "masked_softmax"
    check_floating(scores, owner=owner, arg="scores")
    if not isinstance(observed, Tensor) or observed.dtype != torch.bool:
        got = observed.dtype if isinstance(observed, Tensor) else type(observed).__name__
        raise TypeError(
            f"masked_softmax: expected `observed` to be a torch.bool tensor (True = observed), "
            f"got {got}."
        )
    check_broadcastable(observed, scores, owner=owner, arg="observed", ref_arg="scores")
    rank = max(scores.dim(), 1)  # a 0-d tensor accepts dim 0 and -1, like torch.softmax
    if not -rank <= dim < rank:
        raise ValueError(
            f"{owner}: expected `dim` in [{-rank}, {rank}) for `scores` of "
            f"{scores.dim()} dimensions, got {dim}."
        )
    check_same_device({"scores": scores, "observed": observed}, owner=owner)
    return _masked_softmax(scores, observed, dim)


def _masked_softmax(scores: Tensor, observed: Tensor, dim: int) -> Tensor:
    """:func:`masked_softmax` without the boundary checks (callers have checked)."""
    observed = observed.expand_as(scores)
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.where(observed, lowest), dim=dim)
    return weights.where(observed, 0.0)


def _fill_empty(fused: Tensor, observed: Tensor, missing: Tensor) -> Tensor:
    """Rows of ``fused`` (B, D) with no observed modality become ``missing`` (D,)."""
    anything = observed.any(dim=1, keepdim=True)  # (B, 1)
    return fused.where(anything, missing.to(fused.dtype))


def _check_mixing(values: Tensor, logits: Tensor, observed: Tensor | None, missing: Tensor, *,
                  owner: str, arg: str, layout: str, values_arg: str = "values") -> None:
    """The shared boundary of :func:`attention_fusion` and :func:`gated_fusion`."""
    n = check_tensor(values, "B M D", owner=owner, arg=values_arg)
    check_tensor(logits, layout, owner=owner, arg=arg, B=n["B"], M=n["M"], D=n["D"])
    check_mask(observed, owner=owner, arg="observed", layout="B M", B=n["B"], M=n["M"],
               device=values.device)
    check_tensor(missing, "D", owner=owner, arg="missing", D=n["D"])


def attention_fusion(
    values: Tensor, scores: Tensor, observed: Tensor | None, missing: Tensor
) -> tuple[Tensor, Tensor]:
    """Weighted sum of per-modality vectors, weights a softmax over the observed modalities.

    Args:
        values: Projected modality features.
        scores: One attention logit per sample and modality.
        observed: True where the modality was observed; None when all are.
        missing: Output for a sample with no modality observed.

    Shape:
        - values: (B, M, D); scores: (B, M); observed: (B, M) bool; missing: (D,)
        - output: fused (B, D) and weights (B, M), zero where unobserved, each row summing to
          1 over its observed modalities (all zero for a row with nothing observed)
    """
    _check_mixing(values, scores, observed, missing, owner="attention_fusion", arg="scores",
                  layout="B M")
    if observed is None:
        weights = torch.softmax(scores, dim=1)  # (B, M)
        return (weights.unsqueeze(-1) * values).sum(dim=1), weights
    weights = _masked_softmax(scores, observed, 1)  # (B, M)
    values = values.where(observed.unsqueeze(-1), 0.0)  # (B, M, D)
    fused = (weights.unsqueeze(-1) * values).sum(dim=1)  # (B, D)
    return _fill_empty(fused, observed, missing), weights


def gated_fusion(
    hidden: Tensor, gate_logits: Tensor, observed: Tensor | None, missing: Tensor
) -> Tensor:
    """Gated multimodal unit (Arevalo et al., 2017) for M modalities.

    Each feature d of the output is a convex mix of the observed modalities' hidden features,
    the mixing weights a softmax over the observed modalities of ``gate_logits[:, :, d]``. For two
    modalities this is the paper's ``z * h_1 + (1 - z) * h_2`` with ``z = sigmoid(g_1 - g_2)``.

    Shape:
        - hidden: (B, M, D) (``tanh`` of the projections); gate_logits: (B, M, D);
          observed: (B, M) bool, or None when every modality is observed; missing: (D,)
        - output: (B, D); ``missing`` for a row with nothing observed
    """
    _check_mixing(hidden, gate_logits, observed, missing, owner="gated_fusion",
                  arg="gate_logits", layout="B M D", values_arg="hidden")
    if observed is None:
        return (torch.softmax(gate_logits, dim=1) * hidden).sum(dim=1)
    keep = observed.unsqueeze(-1)  # (B, M, 1)
    gates = _masked_softmax(gate_logits, keep, 1)  # (B, M, D)
    fused = (gates * hidden.where(keep, 0.0)).sum(dim=1)  # (B, D)
    return _fill_empty(fused, observed, missing)


def _with_one(z: Tensor) -> Tensor:
    return F.pad(z, (1, 0), value=1.0)  # (B, 1 + D): [1, z]


def _check_sequence(zs: object, *, owner: str, arg: str = "zs", same_size: bool = False) -> int:
    """A non-empty sequence of (B, D_m) floating tensors with one batch size (and one D with
    ``same_size``) on one device; returns B."""
    if isinstance(zs, Tensor) or not isinstance(zs, Sequence) or not zs:
        raise TypeError(
            f"{owner}: expected `{arg}` to be a non-empty sequence of (B, D_m) tensors, "
            f"got {zs if isinstance(zs, Sequence) and not zs else type(zs).__name__}."
        )
    n = check_tensor(zs[0], "B D", owner=owner, arg=f"{arg}[0]")
    size: dict[str, Any] = {"D": n["D"]} if same_size else {}
    for i, z in enumerate(zs[1:], start=1):
        check_tensor(z, "B D", owner=owner, arg=f"{arg}[{i}]", B=n["B"], **size)
    check_same_device({f"{arg}[{i}]": z for i, z in enumerate(zs)}, owner=owner)
    return n["B"]


def tensor_fusion(zs: Sequence[Tensor]) -> Tensor:
    """Flattened outer product of ``[1, z_m]`` over the modalities (Zadeh et al., 2017).

    The first modality's index varies slowest. The leading 1 keeps every lower-order term: the
    unimodal features and every product of a subset of modalities appear in the result; a
    modality given as zeros contributes only its 1.

    Shape:
        - zs[m]: (B, D_m)
        - output: (B, prod(D_m + 1))
    """
    _check_sequence(zs, owner="tensor_fusion")
    out = _with_one(zs[0])  # (B, D_0 + 1)
    for z in zs[1:]:
        z1 = _with_one(z)  # (B, D_m + 1)
        out = (out.unsqueeze(-1) * z1.unsqueeze(1)).flatten(1)  # (B, prod so far * (D_m + 1))
    return out


def low_rank_tensor_fusion(
    zs: Sequence[Tensor], factors: Sequence[Tensor], weights: Tensor, bias: Tensor
) -> Tensor:
    """Low-rank tensor fusion (Liu et al., 2018).

    ``sum_r weights[r] * prod_m ([1, z_m] @ factors[m][r]) + bias``: the linear map of
    :func:`tensor_fusion` whose weight is the rank-R sum of outer products of the factors,
    computed without forming the product.

    Shape:
        - zs[m]: (B, D_m); factors[m]: (R, D_m + 1, O); weights: (R,); bias: (O,)
        - output: (B, O)
    """
    owner = "low_rank_tensor_fusion"
    _check_sequence(zs, owner=owner)
    if isinstance(factors, Tensor) or not isinstance(factors, Sequence) or len(factors) != len(zs):
        got = len(factors) if isinstance(factors, Sequence) else type(factors).__name__
        raise TypeError(
            f"{owner}: expected `factors` to be a sequence of {len(zs)} (R, D_m + 1, O) tensors "
            f"(one per entry of `zs`), got {got}."
        )
    f0 = check_tensor(factors[0], "R I O", owner=owner, arg="factors[0]", I=zs[0].shape[1] + 1)
    for i, (z, factor) in enumerate(zip(zs[1:], factors[1:]), start=1):
        check_tensor(factor, "R I O", owner=owner, arg=f"factors[{i}]", R=f0["R"],
                     I=z.shape[1] + 1, O=f0["O"])
    check_tensor(weights, "R", owner=owner, arg="weights", R=f0["R"])
    check_tensor(bias, "O", owner=owner, arg="bias", O=f0["O"])
    check_same_device({"zs[0]": zs[0], **{f"factors[{i}]": f for i, f in enumerate(factors)},
                       "weights": weights, "bias": bias}, owner=owner)
    return _low_rank_tensor_fusion(zs, factors, weights, bias)


def _low_rank_tensor_fusion(
    zs: Sequence[Tensor], factors: Sequence[Tensor], weights: Tensor, bias: Tensor
) -> Tensor:
    """:func:`low_rank_tensor_fusion` without the boundary checks (for callers that have
    checked, e.g. a module forward whose parameters fix every size)."""
    projections = [torch.einsum("bi,rio->bro", _with_one(z), factor)  # (B, R, O) each
                   for z, factor in zip(zs, factors)]
    return _low_rank_combine(projections, weights, bias)


def _low_rank_combine(projections: Sequence[Tensor], weights: Tensor, bias: Tensor) -> Tensor:
    """``sum_r weights[r] * prod_m projections[m][:, r] + bias``: the last step of
    :func:`low_rank_tensor_fusion`, given each modality's ``[1, z_m] @ factors[m][r]`` as a
    (B, R, O) tensor (a module computes those with one linear layer per modality)."""
    joint = projections[0]
    for p in projections[1:]:
        joint = joint * p  # (B, R, O)
    return torch.einsum("r,bro->bo", weights.to(joint.dtype), joint) + bias  # (B, O)


def film(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Feature-wise affine modulation ``(1 + gamma) * x + beta`` (Perez et al., 2018).

    ``gamma`` is an offset from 1, so zero modulation is the identity.

    Shape:
        - x, gamma, beta: (B, D)
        - output: (B, D)
    """
    n = check_tensor(x, "B D", owner="film", arg="x")
    check_tensor(gamma, "B D", owner="film", arg="gamma", B=n["B"], D=n["D"])
    check_tensor(beta, "B D", owner="film", arg="beta", B=n["B"], D=n["D"])
    return x * (1.0 + gamma) + beta


def signed_sqrt(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``sign(x) * (sqrt(|x| + eps) - sqrt(eps))``, with a finite gradient everywhere.

    Written as ``x / (sqrt(|x| + eps) + sqrt(eps))`` (the same function), whose autograd
    derivative at 0 is the true one, ``1 / (2 sqrt(eps))``, instead of the plain signed square
    root's infinity. ``eps`` must be positive.
    """
    check_floating(x, owner="signed_sqrt", arg="x")
    return x / ((x.abs() + eps).sqrt() + math.sqrt(eps))


def bilinear_pool(
    projections: Sequence[Tensor],
    observed: Tensor | None,
    rank: int,
    *,
    eps: float = 1e-6,
    dropout_p: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Low-rank multimodal bilinear pooling (MLB / MFB family) over the observed modalities.

    The elementwise product of the observed modalities' projections (an unobserved one counts
    as the multiplicative identity), dropout (``dropout_p``, when ``training``), sum-pooled over
    groups of ``rank``, then
    :func:`signed_sqrt` and L2 normalisation. A row with nothing observed gives zeros.

    Shape:
        - projections[m]: (B, O * rank); observed: (B, M) bool, or None when all are observed
        - output: (B, O), unit L2 norm (zero if the pooled vector or the row is empty)
    """
    owner = "bilinear_pool"
    batch = _check_sequence(projections, owner=owner, arg="projections", same_size=True)
    check_mask(observed, owner=owner, arg="observed", layout="B M", B=batch,
               M=len(projections), device=projections[0].device)
    check_size(rank, owner=owner, arg="rank")
    if not isinstance(rank, int):
        raise TypeError(f"{owner}: expected `rank` to be a positive int, got {rank!r}.")
    if projections[0].shape[1] % rank:
        raise ValueError(
            f"{owner}: expected `rank` to divide the projection size "
            f"{projections[0].shape[1]} (O * rank), got {rank}."
        )
    check_positive(eps, owner=owner, arg="eps")
    check_probability(dropout_p, owner=owner, arg="dropout_p")
    return _bilinear_pool(projections, observed, rank, eps, dropout_p, training)


def _bilinear_pool(projections: Sequence[Tensor], observed: Tensor | None, rank: int,
                   eps: float, dropout_p: float, training: bool) -> Tensor:
    """:func:`bilinear_pool` without the boundary checks (for callers that have checked)."""
    if observed is None:
        joint = projections[0]  # (B, O * R)
        for p in projections[1:]:
            joint = joint * p
    else:
        joint = projections[0].where(observed[:, :1], 1.0)  # (B, O * R)
        for j, p in enumerate(projections[1:], start=1):
            joint = joint * p.where(observed[:, j : j + 1], 1.0)  # (B, O * R)
    joint = F.dropout(joint, dropout_p, training)
    pooled = joint.unflatten(-1, (-1, rank)).sum(dim=-1)  # (B, O)
    out = F.normalize(signed_sqrt(pooled, eps), dim=-1)
    if observed is None:
        return out
    return out.where(observed.any(dim=1, keepdim=True), 0.0)
