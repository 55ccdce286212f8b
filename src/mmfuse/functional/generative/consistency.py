"""The consistency score: generated samples checked against their conditions in a shared
embedding space."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..._checks import (
    check_tensor,
)

__all__ = ["ConsistencyScore", "consistency_score"]


class ConsistencyScore(NamedTuple):
    """How well generated samples agree with their conditions in a shared embedding space.

    Attributes:
        cosine: Mean cosine similarity between each sample and its own condition, scalar.
        retrieval_accuracy: Fraction of samples whose own condition scores highest among all
            N conditions (ties count as a hit, so repeated conditions, e.g. one per class
            label, are not penalised), scalar.
        per_sample: (N,) cosine similarity of each sample with its condition.
    """

    cosine: Tensor
    retrieval_accuracy: Tensor
    per_sample: Tensor


def consistency_score(generated_emb: Tensor, condition_emb: Tensor) -> ConsistencyScore:
    """The source document's alignment check for generation: embed the generated samples and
    their conditions with aligned encoders, then measure cosine agreement and retrieval of the
    condition given the sample.

    Args:
        generated_emb: (N, D) embeddings of the generated samples.
        condition_emb: (N, D) embeddings of the conditions they were generated from, row i
            being sample i's condition.

    Returns:
        :class:`ConsistencyScore`; computed in float32 at least.

    Example:
        >>> cond = torch.eye(3)
        >>> consistency_score(cond + 0.1, cond).retrieval_accuracy
        tensor(1.)
    """
    owner = "consistency_score"
    n = check_tensor(generated_emb, "N D", owner=owner, arg="generated_emb")
    check_tensor(condition_emb, "N D", owner=owner, arg="condition_emb", N=n["N"], D=n["D"])
    if n["N"] == 0:
        raise ValueError(f"{owner}: expected at least one pair to score, got N=0.")
    work = torch.promote_types(generated_emb.dtype, torch.float32)
    g = torch.nn.functional.normalize(generated_emb.to(work), dim=-1)
    c = torch.nn.functional.normalize(condition_emb.to(work), dim=-1)
    sim = g @ c.T  # (N, N): sample i against condition j
    own = sim.diagonal()  # (N,)
    hits = own >= sim.max(dim=1).values
    return ConsistencyScore(own.mean(), hits.to(work).mean(), own)
