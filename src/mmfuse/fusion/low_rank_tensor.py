"""Low-rank tensor fusion: tensor fusion with a rank-R factorised weight."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .._checks import check_size
from .._precision import feature_output
from ..errors import ModalityError
from ..functional.fusion.feature import _low_rank_combine
from ._common import check_config, observe_zero_filled

__all__ = ["LowRankTensorFusion"]


def _to_factor(weight: Tensor, bias: Tensor, rank: int, out_dim: int) -> Tensor:
    """Linear weight (R * D, D_m) and bias (R * D,) -> the factor (R, D_m + 1, D)."""
    w = weight.unflatten(0, (rank, out_dim)).transpose(1, 2)  # (R, D_m, D)
    return torch.cat([bias.reshape(rank, 1, out_dim), w], dim=1)  # (R, D_m + 1, D)


class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018).

    :class:`~mmfuse.fusion.TensorFusion` with its weight written as a sum of ``rank`` outer
    products of per-modality factors, computed without ever forming the outer product:
    ``sum_r w_r * prod_m ([1, z_m] @ W_m[r]) + b``. Cost grows with ``sum(D_m)``, not
    ``prod(D_m)``. Every factor is registered (in ``factors``), so it is trained, saved and
    moved with the module; the widely copied MultiBench version keeps them in a Python list,
    where none of that happens.

    Each factor ``W_m`` (R, D_m + 1, D) is stored as an ``nn.Linear(D_m, R * D)``:
    ``[1, z] @ W_m[r]`` is ``z @ W_m[r, 1:] + W_m[r, 0]``, a linear map whose bias is the
    factor's first row. So ``torch.ao.quantization.quantize_dynamic`` (and
    :func:`mmfuse.deploy.quantize_dynamic`) quantizes the factors, and pruning sees them.
    :meth:`factor` returns ``W_m`` as one (R, D_m + 1, D) tensor. The weight of linear ``m`` is
    ``W_m[:, 1:, :]`` laid out (R * D, D_m), row ``r * D + o``; its bias ``W_m[:, 0, :]``
    flattened. Checkpoints saved with the factors as (R, D_m + 1, D) parameters (state_dict key
    ``factors.<m>``) still load: they are converted on load.

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
        self.factors = nn.ModuleDict(
            {m: nn.Linear(d, rank * out_dim, **dd) for m, d in self.dims.items()}
        )  # z (B, D_m) -> (B, R * D): [1, z] @ W_m[r] for every r
        self.weights = nn.Parameter(torch.empty(rank, **dd))
        self.bias = nn.Parameter(torch.empty(out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # [1, z] @ W_m[r] has unit variance for unit-variance z; so does the weighted sum.
        for m, d in self.dims.items():
            lin = cast(nn.Linear, self.factors[m])
            nn.init.normal_(lin.weight, std=(d + 1) ** -0.5)
            nn.init.normal_(lin.bias, std=(d + 1) ** -0.5)
        nn.init.normal_(self.weights, std=self.rank**-0.5)
        nn.init.zeros_(self.bias)

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        _, zs = observe_zero_filled(self, self.dims, features, present)
        projections = [
            self.factors[m](z).unflatten(-1, (self.rank, self.out_dim))  # (B, R, D)
            for m, z in zip(self.dims, zs)
        ]
        # under autocast the float32 bias would promote the sum back: features follow autocast
        return feature_output(_low_rank_combine(projections, self.weights, self.bias))

    def factor(self, name: str) -> Tensor:
        """Modality ``name``'s factor ``W_m`` as one (R, D_m + 1, D) tensor (row 0 multiplies
        the constant 1), a differentiable view of the stored linear map.

        Example:
            >>> f = LowRankTensorFusion({"image": 8, "text": 4}, out_dim=6, rank=3)
            >>> f.factor("text").shape
            torch.Size([3, 5, 6])
        """
        if name not in self.dims:
            raise ModalityError(
                f"LowRankTensorFusion: expected a modality in {sorted(self.dims)}, got {name!r}."
            )
        lin: Any = self.factors[name]
        weight, bias = lin.weight, lin.bias
        if callable(weight):  # a dynamically quantized Linear: methods, the weight in int8
            weight, bias = weight().dequantize(), bias()
        return _to_factor(weight, bias, self.rank, self.out_dim)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # checkpoints of the (R, D_m + 1, D) parameter layout: key factors.<m>, converted here
        for m in self.dims:
            key = f"{prefix}factors.{m}"
            old = state_dict.get(key)
            if isinstance(old, Tensor) and f"{key}.weight" not in state_dict and old.dim() == 3:
                del state_dict[key]
                r, _, o = old.shape
                state_dict[f"{key}.weight"] = old[:, 1:, :].transpose(1, 2).reshape(r * o, -1)
                state_dict[f"{key}.bias"] = old[:, 0, :].reshape(r * o)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}, rank={self.rank}"
