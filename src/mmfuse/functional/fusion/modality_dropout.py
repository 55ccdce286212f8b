"""Random absence of whole modalities, for training models that must survive missing inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_probability, check_tensor

__all__ = ["modality_dropout"]


def modality_dropout(
    observed: Tensor,
    p: float,
    *,
    min_present: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mark each observed modality absent with probability ``p``, keeping at least
    ``min_present`` of the observed modalities per sample.

    Every observed entry is dropped independently with probability ``p``. A sample left with
    fewer than ``min_present`` modalities gets dropped ones back, chosen uniformly at random,
    until it has ``min_present`` (or all it had, if it had fewer). Unobserved entries stay
    unobserved. With ``min_present=0`` each observed entry survives with probability ``1 - p``.

    Args:
        observed: True where the modality was observed.
        p: Drop probability in [0, 1].
        min_present: How many observed modalities each sample keeps at least.
        generator: Random source (on ``observed``'s device), for reproducible draws.

    Shape:
        - observed: (B, M) bool
        - output: (B, M) bool, a subset of ``observed``
    """
    owner = "modality_dropout"
    check_tensor(observed, "B M", owner=owner, arg="observed", floating=False)
    check_probability(p, owner=owner, arg="p", closed=True)
    if isinstance(min_present, bool) or not isinstance(min_present, int) or min_present < 0:
        raise ValueError(
            f"{owner}: expected `min_present` to be a non-negative int, got {min_present!r}."
        )
    draw = torch.rand(observed.shape, generator=generator, device=observed.device)  # (B, M)
    dropped = observed & (draw < p)
    kept = observed & ~dropped
    if min_present <= 0:
        return kept
    need = (min_present - kept.sum(dim=1, keepdim=True)).clamp(min=0)  # (B, 1)
    # Restore `need` dropped entries per row, chosen uniformly: rank the dropped entries by a
    # fresh uniform key (smallest first) and take the first `need`.
    key = torch.rand(observed.shape, generator=generator, device=observed.device)  # (B, M)
    key = key.where(dropped, 2.0)  # not-dropped entries rank last
    rank = key.argsort(dim=1).argsort(dim=1)  # (B, M): position of each entry in its row
    restored = dropped & (rank < need)
    return kept | restored
