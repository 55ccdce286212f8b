"""Low-rank bilinear pooling (MLB / MFB family) for any number of modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_positive, check_probability, check_size
from ..functional.fusion.feature import _bilinear_pool
from ._common import check_config, observe_zero_filled

__all__ = ["BilinearFusion"]


class BilinearFusion(nn.Module):
    """Multimodal factorised bilinear pooling (Kim et al., 2017; Yu et al., 2017).

    Each modality is projected to ``out_dim * rank`` features; the projections are multiplied
    elementwise (a rank-``rank`` factorisation of a bilinear, or M-linear, form per output
    feature), sum-pooled over groups of ``rank``, passed through a signed square root whose
    gradient is finite at 0 (see :func:`mmfuse.functional.signed_sqrt`) and L2-normalised.

    Missing modalities: an absent modality is left out of the product (it counts as the
    multiplicative identity), so the output is the pooling of the present ones; its values
    are never read. A sample with nothing present gives the zero vector.

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: Output feature size D.
        rank: Factors per output feature (MFB's k; 1 is MLB's Hadamard product).
        dropout: Dropout on the joint product before pooling (training only).
        eps: The signed square root's smoothing constant (derivative ``1/(2 sqrt(eps))`` at 0).

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D), unit L2 norm (or zero)

    Example:
        >>> f = BilinearFusion({"image": 8, "text": 4}, out_dim=6, rank=3)
        >>> out = f({"image": torch.randn(2, 8), "text": torch.randn(2, 4)})
        >>> out.shape
        torch.Size([2, 6])
        >>> torch.allclose(out.norm(dim=-1), torch.ones(2))
        True
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        rank: int,
        *,
        dropout: float = 0.0,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim)
        check_size(rank, owner=self, arg="rank")
        check_probability(dropout, owner=self, arg="dropout")
        check_positive(eps, owner=self, arg="eps")
        self.rank = int(rank)
        self.eps = float(eps)
        self.proj = nn.ModuleDict(
            {m: nn.Linear(d, out_dim * rank, **dd) for m, d in self.dims.items()}
        )
        self.dropout = float(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.proj.values():
            layer.reset_parameters()  # type: ignore[operator]

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        obs, zs = observe_zero_filled(self, self.dims, features, present)
        projections = [self.proj[m](z) for m, z in zip(self.dims, zs)]  # (B, D * R) each
        # inputs checked above and sizes fixed by the parameters: the unchecked body
        return _bilinear_pool(projections, obs.mask, self.rank, self.eps, self.dropout,
                              self.training)  # (B, D)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"dims={self.dims}, out_dim={self.out_dim}, rank={self.rank}, "
            f"dropout={self.dropout}, eps={self.eps}"
        )
