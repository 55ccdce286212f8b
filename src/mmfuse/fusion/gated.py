"""Gated multimodal unit for any number of modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..functional import fill_absent, gated_fusion
from ._common import check_config, observe_zero_filled

__all__ = ["GatedFusion"]


class GatedFusion(nn.Module):
    """Mix modalities with learned gates (gated multimodal unit, Arevalo et al., 2017).

    Each modality gives ``h_m = tanh(W_m x_m)``; a gate network reads every modality's features
    (concatenated) and gives, per modality and output feature, a logit; a softmax over the
    present modalities turns them into gates, and the output is ``sum_m z_m * h_m``. With two
    modalities this is the paper's ``z * h_1 + (1 - z) * h_2``, ``z`` a sigmoid.

    Missing modalities: an absent modality's gate is 0 and the others renormalise. In the gate
    network's input its features are replaced by a learned per-modality ``missing`` vector
    (initialised at zero), so the gates can react to the absence but never read the absent
    values. A sample with no modality present gets a learned ``empty`` output embedding
    (initialised at zero).

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: Output feature size D.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D), each feature in (-1, 1) for rows with a modality present

    Example:
        >>> f = GatedFusion({"image": 8, "text": 4}, out_dim=6)
        >>> x = {"image": torch.randn(2, 8), "text": torch.randn(2, 4)}
        >>> f(x, present={"text": torch.tensor([True, False])}).shape  # row 1: image only
        torch.Size([2, 6])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim, **dd) for m, d in self.dims.items()})
        self.gate = nn.Linear(sum(self.dims.values()), len(self.dims) * out_dim, **dd)
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(d, **dd)) for m, d in self.dims.items()}
        )
        self.empty = nn.Parameter(torch.empty(out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.proj.values():
            layer.reset_parameters()  # type: ignore[operator]
        self.gate.reset_parameters()
        for p in self.missing.values():
            nn.init.zeros_(p)
        nn.init.zeros_(self.empty)

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        obs, zs = observe_zero_filled(self, self.dims, features, present)
        hidden = torch.stack(
            [torch.tanh(self.proj[m](z)) for m, z in zip(self.dims, zs)], dim=1
        )  # (B, M, D)
        gate_in = torch.cat(
            [z if obs.given[j] else fill_absent(z, obs.observed[:, j], self.missing[m])
             for j, (m, z) in enumerate(zip(self.dims, zs))],
            dim=-1,
        )  # (B, sum D_m)
        logits = self.gate(gate_in).unflatten(-1, (len(self.dims), self.out_dim))  # (B, M, D)
        return gated_fusion(hidden, logits, obs.mask, self.empty)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}"
