"""Attention-weighted fusion over the observed modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import torch
from torch import Tensor, nn

from .._checks import check_size
from ..functional import attention_fusion
from ._common import check_config, observe_zero_filled

__all__ = ["AttentionFusion", "AttentionFusionOutput"]


class AttentionFusionOutput(NamedTuple):
    """What :class:`AttentionFusion` returns with ``return_weights=True``.

    Attributes:
        fused: (B, out_dim) fused features.
        weights: (B, M) attention weights in the module's declared modality order, zero for
            absent modalities, summing to 1 over the present ones (all zero if none is).
    """

    fused: Tensor
    weights: Tensor


class AttentionFusion(nn.Module):
    """Per-sample attention over the present modalities (the source design's feature fusion).

    Each modality is projected to ``out_dim``; a scoring network shared by all modalities gives
    each projection one logit; a softmax over the modalities *present* for that sample turns the
    logits into weights; the output is the weighted sum of the projections. (The source sketch
    took a softmax over a single logit, which is always 1, and mixed unprojected features.)

    Missing modalities: an absent modality gets weight 0 and the rest renormalise; its values
    are never read. A sample with no modality present gets a learned ``missing`` embedding
    (initialised at zero) and all-zero weights.

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: Output feature size D; None takes the smallest of ``dims`` (TorchMultimodal's
            ``AttentionFusionModule`` default).
        hidden: Hidden size of the scoring network (``Linear, tanh, Linear``); None scores with
            a single linear map.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D); with ``return_weights=True`` an :class:`AttentionFusionOutput`
          (fused (B, D), weights (B, M))

    Example:
        >>> f = AttentionFusion({"image": 8, "text": 4}, out_dim=6)
        >>> out = f({"image": torch.randn(2, 8), "text": torch.randn(2, 4)}, return_weights=True)
        >>> out.fused.shape, out.weights.shape
        (torch.Size([2, 6]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int | None = None,
        *,
        hidden: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim, default_out_dim=True)
        out_dim = self.out_dim
        if hidden is not None:
            check_size(hidden, owner=self, arg="hidden")
        self.hidden = hidden
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim, **dd) for m, d in self.dims.items()})
        if hidden is None:
            self.score: nn.Module = nn.Linear(out_dim, 1, bias=False, **dd)
        else:  # a bias on the last layer would shift every logit alike: softmax ignores it
            self.score = nn.Sequential(
                nn.Linear(out_dim, hidden, **dd), nn.Tanh(), nn.Linear(hidden, 1, bias=False, **dd)
            )
        self.missing = nn.Parameter(torch.empty(out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.proj.values():
            layer.reset_parameters()  # type: ignore[operator]
        for layer in self.score.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        nn.init.zeros_(self.missing)

    @overload
    def forward(self, features: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = ..., *,
                return_weights: Literal[False] = ...) -> Tensor:
        ...

    @overload
    def forward(self, features: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = ..., *,
                return_weights: Literal[True]) -> AttentionFusionOutput:
        ...

    @overload
    def forward(self, features: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = ..., *,
                return_weights: bool) -> Tensor | AttentionFusionOutput:
        ...

    def forward(
        self,
        features: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None = None,
        *,
        return_weights: bool = False,
    ) -> Tensor | AttentionFusionOutput:
        obs, zs = observe_zero_filled(self, self.dims, features, present)
        values = torch.stack([self.proj[m](z) for m, z in zip(self.dims, zs)], dim=1)  # (B, M, D)
        scores = self.score(values).squeeze(-1)  # (B, M)
        fused, weights = attention_fusion(
            values, scores, obs.mask, self.missing
        )
        if return_weights:
            return AttentionFusionOutput(fused, weights)
        return fused

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}, hidden={self.hidden}"
