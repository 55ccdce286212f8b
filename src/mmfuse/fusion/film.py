"""FiLM fusion: one modality modulated feature-wise by the others."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_choice
from ..functional import fill_absent, film
from ._common import check_config, observe_zero_filled

__all__ = ["FiLMFusion"]


class FiLMFusion(nn.Module):
    """Feature-wise linear modulation of a target modality by the others (Perez et al., 2018).

    The target is projected to ``out_dim``: ``h = W_t x_t``. Every other modality ``m`` gives a
    scale and shift, ``(gamma_m, beta_m) = C_m x_m``, summed over the present ones; the output
    is ``(1 + gamma) * h + beta``. The conditioning maps start at zero, so a fresh module
    returns the target's projection unchanged (AdaLN-zero style).

    Missing modalities: an absent conditioning modality adds nothing to ``gamma`` and
    ``beta`` (with every other modality absent the output is ``h``). An absent *target* is
    replaced by a learned ``missing`` embedding (initialised at zero), still modulated by the
    present others, so at initialisation such a row is ``beta``. A sample with nothing present
    gives ``missing``.

    The signature is ``FiLMFusion(dims, out_dim, *, target=None)``: ``out_dim`` second, like
    every feature-level fusion module, and ``target`` keyword-only, so
    ``FiLMFusion(dims, "image", 6)`` is a ``TypeError`` rather than a silent mix-up.

    Args:
        dims: Feature size per modality, at least two, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: Output feature size D.
        target: Keyword-only. The name of the modality that is modulated, one of ``dims``;
            None (the default) picks the first one in ``dims``. The others condition it.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D)

    Example:
        >>> f = FiLMFusion({"image": 8, "text": 4}, out_dim=6, target="image")
        >>> x = {"image": torch.randn(2, 8), "text": torch.randn(2, 4)}
        >>> f(x).shape
        torch.Size([2, 6])
        >>> torch.allclose(f(x), f.proj(x["image"]))  # fresh: the target's projection
        True
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        target: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(
            self, dims, out_dim, min_modalities=2, why=" (a target and one to condition on)"
        )
        target = next(iter(self.dims)) if target is None else target
        check_choice(target, list(self.dims), owner=self, arg="target")
        self.target = target
        self.proj = nn.Linear(self.dims[target], out_dim, **dd)
        self.cond = nn.ModuleDict(
            {m: nn.Linear(d, 2 * out_dim, **dd) for m, d in self.dims.items() if m != target}
        )
        self.missing = nn.Parameter(torch.empty(out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        for layer in self.cond.values():
            nn.init.zeros_(layer.weight)  # type: ignore[arg-type]
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
        nn.init.zeros_(self.missing)

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        obs, zs = observe_zero_filled(self, self.dims, features, present)
        names = list(self.dims)
        t = names.index(self.target)
        h = self.proj(zs[t])  # (B, D)
        if not obs.given[t]:
            h = fill_absent(h, obs.observed[:, t], self.missing)
        parts = []  # each (B, 2D): that modality's gamma and beta
        for j, m in enumerate(names):
            if j == t:
                continue
            c = self.cond[m](zs[j])
            parts.append(c if obs.given[j] else fill_absent(c, obs.observed[:, j], c.new_zeros(())))
        mod = parts[0]
        for c in parts[1:]:
            mod = mod + c
        gamma, beta = mod.chunk(2, dim=-1)  # (B, D) each
        return film(h, gamma, beta)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}, target={self.target!r}"
