"""Boundary handling shared by the feature-level fusion modules (private)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .._checks import check_features, check_presence, presence_matrix
from ..functional import fill_absent

__all__: list[str] = []


def observe(
    owner: object,
    dims: Mapping[str, int],
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None,
    *,
    arg: str = "features",
    layout: str = "B D",
) -> tuple[int, Tensor, Tensor]:
    """Validate ``features``/``present`` and return (B, a reference tensor, observed (B, M))."""
    batch = check_features(features, dims, owner=owner, arg=arg, layout=layout, allow_missing=True)
    ref = next(features[m] for m in dims if m in features)
    check_presence(present, dims, batch, owner=owner, device=ref.device)
    observed = presence_matrix(features, present, list(dims), batch, ref.device)  # (B, M)
    return batch, ref, observed


def zero_filled(
    dims: Mapping[str, int],
    features: Mapping[str, Tensor],
    observed: Tensor,
    ref: Tensor,
    batch: int,
) -> list[Tensor]:
    """Each declared modality's features, zero where unobserved (and zeros if left out)."""
    zero = ref.new_zeros(())
    out = []
    for j, (m, d) in enumerate(dims.items()):
        if m in features:
            out.append(fill_absent(features[m], observed[:, j], zero))
        else:
            out.append(ref.new_zeros(batch, d))
    return out

