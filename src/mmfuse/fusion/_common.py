"""Boundary handling shared by the feature-level fusion modules (private)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor, nn

from .._checks import (
    check_dims,
    check_features,
    check_inputs,
    check_presence,
    check_size,
    owner_name,
    presence_matrix,
)
from ..functional import fill_absent

__all__: list[str] = []


class Observed(NamedTuple):
    """What :func:`observe` returns."""

    batch: int
    ref: Tensor  # the first given modality's tensor (device and dtype of the inputs)
    observed: Tensor  # (B, M) bool, True = observed
    given: list[bool]  # per modality: in ``features`` with no presence entry (all observed)

    @property
    def all_given(self) -> bool:
        """Every modality observed for every sample, known without reading ``observed``."""
        return all(self.given)

    @property
    def mask(self) -> Tensor | None:
        """``observed``, or None where every modality is observed for every sample (the
        functional ops then skip their presence masking)."""
        return None if self.all_given else self.observed


def check_config(
    owner: object, dims: object, out_dim: object, *, min_modalities: int = 1, why: str = "",
    default_out_dim: bool = False,
) -> tuple[dict[str, int], int]:
    """Validate a feature-level constructor's ``dims`` and ``out_dim``; return them as stored.

    ``min_modalities`` is the fewest modalities the module can fuse (``why`` says why, in the
    message). With ``default_out_dim``, ``out_dim=None`` means the smallest of ``dims``."""
    checked = check_dims(dims, owner=owner)
    if default_out_dim and out_dim is None:
        out_dim = min(checked.values())
    if len(checked) < min_modalities:
        raise ValueError(
            f"{owner_name(owner)}: expected `dims` to name at least {min_modalities} "
            f"modalities{why}, got {list(checked)}."
        )
    return checked, check_size(out_dim, owner=owner, arg="out_dim")


def observe(
    owner: object,
    dims: Mapping[str, int],
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None,
    *,
    arg: str = "features",
    layout: str = "B D",
    dtype: bool = True,
) -> Observed:
    """Validate ``features``/``present`` (shapes, then dtype and device against ``owner``'s
    parameters; ``dtype=False`` checks devices only) and return the batch size and presence."""
    batch = check_features(features, dims, owner=owner, arg=arg, layout=layout, allow_missing=True)
    ref = next(features[m] for m in dims if m in features)
    check_presence(present, dims, batch, owner=owner, device=ref.device)
    if isinstance(owner, nn.Module):
        check_inputs(owner, {arg: features}, dtype=dtype)
    observed = presence_matrix(features, present, list(dims), batch, ref.device)  # (B, M)
    given = [m in features and (present is None or m not in present) for m in dims]
    return Observed(batch, ref, observed, given)


def zero_filled(
    dims: Mapping[str, int], features: Mapping[str, Tensor], obs: Observed
) -> list[Tensor]:
    """Each declared modality's features, zero where unobserved (and zeros if left out)."""
    zero = obs.ref.new_zeros(())
    out = []
    for j, (m, d) in enumerate(dims.items()):
        if obs.given[j]:
            out.append(features[m])
        elif m in features:
            out.append(fill_absent(features[m], obs.observed[:, j], zero))
        else:
            out.append(obs.ref.new_zeros(obs.batch, d))
    return out



def observe_zero_filled(
    owner: object,
    dims: Mapping[str, int],
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None,
) -> tuple[Observed, list[Tensor]]:
    """:func:`observe`, then :func:`zero_filled`: the presence and each modality's (B, D_m)
    features in the declared order, zero where unobserved."""
    obs = observe(owner, dims, features, present)
    return obs, zero_filled(dims, features, obs)
