"""Tensor fusion: a linear map of the outer product of every modality's ``[1, z_m]``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_size
from ..functional import tensor_fusion
from ._common import check_config, observe_zero_filled

__all__ = ["TensorFusion"]


class TensorFusion(nn.Module):
    """Tensor fusion network's fusion layer (Zadeh et al., 2017).

    The flattened outer product of ``[1, z_m]`` over the modalities (in the declared order,
    the first varying slowest) holds every unimodal, bimodal, ... M-modal product of features;
    a linear map takes it to ``out_dim``. Its size is ``prod(D_m + 1)``, which grows fast:
    construction fails past ``max_fused_size`` (project the modalities down first, or use
    :class:`~mmfuse.fusion.LowRankTensorFusion`).

    Missing modalities: an absent modality enters as ``[1, 0, ..., 0]``, so only the terms that
    do not involve it remain (its values are never read). A sample with nothing present gives
    the constant term, ``linear.weight[:, 0] + linear.bias`` (learned, finite).

    Args:
        dims: Feature size per modality, e.g. ``{"image": 32, "text": 16}``.
        out_dim: Output feature size D.
        max_fused_size: Largest ``prod(D_m + 1)`` accepted.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D)

    Example:
        >>> f = TensorFusion({"image": 8, "text": 4}, out_dim=6)
        >>> f.fused_size  # (8 + 1) * (4 + 1)
        45
        >>> f({"image": torch.randn(2, 8), "text": torch.randn(2, 4)}).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        max_fused_size: int = 1 << 20,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim)
        check_size(max_fused_size, owner=self, arg="max_fused_size")
        self.fused_size = math.prod(d + 1 for d in self.dims.values())
        if self.fused_size > max_fused_size:
            sizes = " * ".join(f"({d}+1)" for d in self.dims.values())
            raise ValueError(
                f"TensorFusion: expected the fused size prod(D_m + 1) to be at most "
                f"`max_fused_size`={max_fused_size}, got {sizes} = {self.fused_size}; project "
                f"the modalities to fewer features, raise `max_fused_size`, or use "
                f"LowRankTensorFusion."
            )
        self.linear = nn.Linear(self.fused_size, out_dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        _, zs = observe_zero_filled(self, self.dims, features, present)
        return self.linear(tensor_fusion(zs))  # (B, prod(D_m + 1)) -> (B, D)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}, fused_size={self.fused_size}"
