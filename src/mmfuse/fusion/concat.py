"""Concatenation fusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_dims, check_size
from ..functional import fill_absent
from ._common import observe

__all__ = ["ConcatFusion"]


class ConcatFusion(nn.Module):
    """Concatenate modality features in the declared order, optionally projecting the result.

    An absent modality is replaced by a learned "missing" embedding (initialised at zero), so
    the output never depends on the values given for an absent modality.

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: If given, a linear projection to this size; otherwise ``sum(dims)``.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, out_dim)

    Example:
        >>> f = ConcatFusion({"image": 8, "text": 4})
        >>> f({"image": torch.randn(2, 8), "text": torch.randn(2, 4)}).shape
        torch.Size([2, 12])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims = check_dims(dims, owner=self)
        total = sum(self.dims.values())
        if out_dim is not None:
            check_size(out_dim, owner=self, arg="out_dim")
        self.out_dim = total if out_dim is None else int(out_dim)
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(d, **dd)) for m, d in self.dims.items()}
        )
        self.proj = nn.Linear(total, out_dim, **dd) if out_dim is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.missing.values():
            nn.init.zeros_(p)
        if self.proj is not None:
            self.proj.reset_parameters()

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        # without a projection the output follows the inputs' dtype (concatenation promotes)
        obs = observe(self, self.dims, features, present, dtype=self.proj is not None)
        if obs.all_given:  # nothing absent: no filling needed
            z = torch.cat([features[m] for m in self.dims], dim=-1)  # (B, sum D_m)
            return z if self.proj is None else self.proj(z)
        parts = []
        for j, (m, d) in enumerate(self.dims.items()):
            fill = self.missing[m]
            x = features[m] if m in features else fill.to(obs.ref.dtype).expand(obs.batch, d)
            # x: (B, D_m)
            parts.append(fill_absent(x, obs.observed[:, j], fill))  # (B, D_m)
        z = torch.cat(parts, dim=-1)  # (B, sum D_m)
        return z if self.proj is None else self.proj(z)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}"
