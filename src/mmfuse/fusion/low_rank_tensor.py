"""Low-rank tensor fusion: tensor fusion with a rank-R factorised weight."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_size
from ..functional.fusion.feature import _low_rank_tensor_fusion
from ._common import check_config, observe_zero_filled

__all__ = ["LowRankTensorFusion"]


class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018).

    :class:`~mmfuse.fusion.TensorFusion` with its weight written as a sum of ``rank`` outer
    products of per-modality factors, computed without ever forming the outer product:
    ``sum_r w_r * prod_m ([1, z_m] @ W_m[r]) + b``. Cost grows with ``sum(D_m)``, not
    ``prod(D_m)``. Every factor is a registered parameter (in ``factors``, a ParameterDict),
    so it is trained, saved and moved with the module; the widely copied MultiBench version
    keeps them in a Python list, where none of that happens.

    Missing modalities: as in TensorFusion, an absent modality enters as ``[1, 0, ..., 0]``
    (its factor contributes only its first row); a sample with nothing present gives
    ``sum_r w_r * prod_m W_m[r, 0] + b``, a learned constant.

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: Output feature size D.
        rank: Number of rank-1 terms R.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D)

    Example:
        >>> f = LowRankTensorFusion({"image": 8, "text": 4}, out_dim=6, rank=3)
        >>> f({"image": torch.randn(2, 8), "text": torch.randn(2, 4)}).shape
        torch.Size([2, 6])
        >>> f({"image": torch.randn(2, 8)}).shape  # "text" left out: absent for the batch
        torch.Size([2, 6])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim)
        check_size(rank, owner=self, arg="rank")
        self.rank = int(rank)
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(rank, d + 1, out_dim, **dd)) for m, d in self.dims.items()}
        )  # (R, D_m + 1, D) each
        self.weights = nn.Parameter(torch.empty(rank, **dd))
        self.bias = nn.Parameter(torch.empty(out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # [1, z] @ W_m[r] has unit variance for unit-variance z; so does the weighted sum.
        for m, d in self.dims.items():
            nn.init.normal_(self.factors[m], std=(d + 1) ** -0.5)
        nn.init.normal_(self.weights, std=self.rank**-0.5)
        nn.init.zeros_(self.bias)

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        _, zs = observe_zero_filled(self, self.dims, features, present)
        factors = [self.factors[m] for m in self.dims]
        return _low_rank_tensor_fusion(zs, factors, self.weights, self.bias)  # checked above

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}, rank={self.rank}"
