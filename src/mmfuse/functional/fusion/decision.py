"""Decision-level fusion: merge per-modality class distributions into one distribution.

Every function takes the per-modality predictions stacked as (B, M, C), a (B, M) bool matrix of
observed modalities (True = observed) and, where the rule uses them, non-negative per-modality
weights (M,) or (B, M). Absent modalities drop out and the weights of the others renormalise; a
row with no modality observed gets the uniform distribution 1/C. Values in absent slots are
never read (not even NaN or inf there). The math runs in float32 or wider and the result comes
back in the input's dtype; under ``torch.autocast`` :func:`decision_fusion` returns float32
(probabilities stay in float32, see docs/conventions.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_choice, check_same_device, check_tensor
from ..._precision import autocast_dtype

__all__ = [
    "DECISION_STRATEGIES",
    "decision_fusion",
    "hard_vote",
    "max_fusion",
    "product_of_experts",
    "soft_vote",
    "weighted_mean",
]

DECISION_STRATEGIES = ("weighted", "product", "soft_vote", "hard_vote", "max")


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _normalised_weights(weights: Tensor, observed: Tensor) -> Tensor:
    """(B, M) weights zeroed where absent and summing to 1 over each row's observed modalities
    (all zeros for a row with nothing observed)."""
    w = weights.expand(observed.shape).where(observed, torch.zeros((), dtype=weights.dtype,
                                                                  device=weights.device))
    total = w.sum(dim=1, keepdim=True)  # (B, 1)
    return w / total.clamp_min(torch.finfo(w.dtype).tiny)


def _uniform_where_empty(out: Tensor, observed: Tensor) -> Tensor:
    """Rows with no observed modality become the uniform distribution."""
    any_obs = observed.any(dim=1, keepdim=True)  # (B, 1)
    uniform = torch.full((), 1.0 / out.shape[-1], dtype=out.dtype, device=out.device)
    return out.where(any_obs, uniform)


def _clean(x: Tensor, observed: Tensor, fill: float) -> Tensor:
    """Replace absent slots of (B, M, C) by ``fill`` (so their values are never used)."""
    return x.where(observed[..., None], torch.full((), fill, dtype=x.dtype, device=x.device))


def _weighted_mean(probs: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """:func:`weighted_mean` without the boundary checks (callers have checked)."""
    dt = _work_dtype(probs)
    p = _clean(probs.to(dt), observed, 0.0)
    w = _normalised_weights(weights.to(dt), observed)  # (B, M)
    out = torch.einsum("bm,bmc->bc", w, p)
    return _uniform_where_empty(out, observed).to(probs.dtype)


def _soft_vote(probs: Tensor, observed: Tensor) -> Tensor:
    """:func:`soft_vote` without the boundary checks (callers have checked)."""
    ones = torch.ones(probs.shape[1], dtype=probs.dtype, device=probs.device)
    return _weighted_mean(probs, observed, ones)


def _product_of_experts(log_probs: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """:func:`product_of_experts` without the boundary checks (callers have checked)."""
    dt = _work_dtype(log_probs)
    lp = _clean(log_probs.to(dt), observed, 0.0)
    w = _normalised_weights(weights.to(dt), observed)  # (B, M)
    n = observed.sum(dim=1, keepdim=True).to(dt)  # (B, 1)
    score = torch.einsum("bm,bmc->bc", w * n, lp)
    out = torch.softmax(score, dim=-1)  # a row with nothing observed scores 0: already uniform
    return _uniform_where_empty(out, observed).to(log_probs.dtype)


def _hard_vote(probs: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """:func:`hard_vote` without the boundary checks (callers have checked)."""
    dt = _work_dtype(probs)
    p = _clean(probs.to(dt), observed, 0.0)
    top = p.argmax(dim=-1)  # (B, M)
    onehot = torch.nn.functional.one_hot(top, probs.shape[-1]).to(dt)  # (B, M, C)
    votes = (onehot * observed[..., None].to(dt)).sum(dim=1)  # (B, C); exact 0/1 counts
    wmean = _weighted_mean(probs.to(dt), observed, weights.to(dt))  # (B, C)
    n = observed.sum(dim=1, keepdim=True).to(dt)  # (B, 1)
    out = (votes + 0.5 * wmean) / (n + 0.5)
    return _uniform_where_empty(out, observed).to(probs.dtype)


def _max_fusion(probs: Tensor, observed: Tensor) -> Tensor:
    """:func:`max_fusion` without the boundary checks (callers have checked)."""
    dt = _work_dtype(probs)
    p = _clean(probs.to(dt), observed, 0.0)  # probabilities are >= 0, so 0 never wins a max
    top = p.max(dim=1).values  # (B, C)
    out = top / top.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    return _uniform_where_empty(out, observed).to(probs.dtype)


def weighted_mean(probs: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean of the observed distributions, ``sum_m w_m p_m / sum_m w_m``.

    The source document's rule (text 0.6, audio 0.4) generalised to M modalities and C classes.

    Shape:
        - probs: (B, M, C); observed: (B, M) bool; weights: (M,) or (B, M), non-negative
        - output: (B, C)
    """
    _check_inputs(probs, observed, weights, None, owner="weighted_mean", arg="probs",
                  need_weights=True)
    return _weighted_mean(probs, observed, weights)


def soft_vote(probs: Tensor, observed: Tensor) -> Tensor:
    """Unweighted mean of the observed distributions (every modality counts the same).

    Shape:
        - probs: (B, M, C); observed: (B, M) bool
        - output: (B, C)
    """
    _check_inputs(probs, observed, None, None, owner="soft_vote", arg="probs")
    return _soft_vote(probs, observed)


def product_of_experts(log_probs: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """Product of the observed experts, renormalised, computed in log space.

    ``p ∝ prod_m p_m ** (n * w_m)`` with ``w`` renormalised over the ``n`` observed modalities:
    with equal weights this is the plain product of experts; unequal weights shift the exponents
    while keeping their total at ``n``.

    Shape:
        - log_probs: (B, M, C) log-probabilities (or logits: any per-row shift cancels);
          observed: (B, M) bool; weights: (M,) or (B, M), non-negative
        - output: (B, C)
    """
    _check_inputs(log_probs, observed, weights, None, owner="product_of_experts",
                  arg="log_probs", need_weights=True)
    return _product_of_experts(log_probs, observed, weights)


def hard_vote(probs: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """Majority vote of the observed modalities' top classes, ties broken by the weighted mean.

    Each observed modality casts one vote for its arg-max class. The result is the distribution
    ``(votes + wmean / 2) / (n + 1/2)``: its arg-max is the class with most votes, and among
    classes with equally many votes the one with the larger weighted mean
    (:func:`weighted_mean`); ``wmean / 2 < 1`` never outweighs a whole vote. Gradients flow only
    through the weighted-mean part.

    Shape:
        - probs: (B, M, C); observed: (B, M) bool; weights: (M,) or (B, M), non-negative
        - output: (B, C)
    """
    _check_inputs(probs, observed, weights, None, owner="hard_vote", arg="probs",
                  need_weights=True)
    return _hard_vote(probs, observed, weights)


def max_fusion(probs: Tensor, observed: Tensor) -> Tensor:
    """Per class, the largest probability over the observed modalities, renormalised.

    Shape:
        - probs: (B, M, C); observed: (B, M) bool
        - output: (B, C)
    """
    _check_inputs(probs, observed, None, None, owner="max_fusion", arg="probs")
    return _max_fusion(probs, observed)


def _check_inputs(
    predictions: Tensor, observed: Tensor, weights: Tensor | None, temperature: Tensor | None,
    *, owner: str = "decision_fusion", arg: str = "predictions", need_weights: bool = False,
) -> None:
    """The boundary of :func:`decision_fusion` and the single strategies: layouts, dtypes,
    sizes and one device."""
    n = check_tensor(predictions, "B M C", owner=owner, arg=arg)
    b, m = n["B"], n["M"]
    check_tensor(observed, "B M", owner=owner, arg="observed", floating=False, B=b, M=m)
    if weights is not None or need_weights:
        two_d = isinstance(weights, Tensor) and weights.dim() == 2
        check_tensor(weights, "B M" if two_d else "M", owner=owner, arg="weights", B=b, M=m)
    if temperature is not None:
        check_tensor(temperature, "M", owner=owner, arg="temperature", M=m)
    check_same_device(
        {arg: predictions, "observed": observed, "weights": weights,
         "temperature": temperature},
        owner=owner,
    )


def decision_fusion(
    predictions: Tensor,
    observed: Tensor,
    weights: Tensor | None = None,
    *,
    strategy: str = "weighted",
    inputs: str = "probs",
    temperature: Tensor | None = None,
) -> Tensor:
    """Fuse per-modality predictions with one of :data:`DECISION_STRATEGIES`.

    Args:
        predictions: (B, M, C) probabilities (``inputs="probs"``) or logits (``"logits"``).
        observed: (B, M) bool, True = the modality was observed for that sample.
        weights: (M,) or (B, M) non-negative weights; None = equal weights.
        strategy: ``"weighted"``, ``"product"``, ``"soft_vote"``, ``"hard_vote"`` or ``"max"``.
        inputs: ``"probs"`` or ``"logits"``; logits become ``softmax(logits / T_m)``.
        temperature: (M,) positive per-modality temperatures for logits; None = 1.

    Returns:
        (B, C) probabilities that sum to 1 per row; uniform for a row with nothing observed.
        In the input's dtype, or float32 (float64 kept) under ``torch.autocast``.
    """
    check_choice(strategy, DECISION_STRATEGIES, owner="decision_fusion", arg="strategy")
    check_choice(inputs, ("probs", "logits"), owner="decision_fusion", arg="inputs")
    _check_inputs(predictions, observed, weights, temperature)
    dt = _work_dtype(predictions)
    x = _clean(predictions.to(dt), observed, 0.0)  # (B, M, C)
    if weights is None:
        weights = torch.ones(predictions.shape[1], dtype=dt, device=predictions.device)
    log_p: Tensor | None = None
    if inputs == "logits":
        if temperature is not None:
            x = x / temperature.to(dt)[:, None]  # (B, M, C) / (M, 1)
        log_p = torch.log_softmax(x, dim=-1)
        probs = log_p.exp()
    else:
        probs = x
    if strategy == "weighted":
        out = _weighted_mean(probs, observed, weights)
    elif strategy == "product":
        if log_p is None:  # only the product of experts works in log space
            log_p = x.clamp_min(torch.finfo(dt).tiny).log()
        out = _product_of_experts(log_p, observed, weights)
    elif strategy == "soft_vote":
        out = _soft_vote(probs, observed)
    elif strategy == "hard_vote":
        out = _hard_vote(probs, observed, weights)
    else:
        out = _max_fusion(probs, observed)
    if autocast_dtype(predictions.device) is not None:  # probabilities: float32 under autocast
        return out
    return out.to(predictions.dtype)
