"""Supervised contrastive loss as a module (Khosla et al., 2020)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_inputs, check_positive
from ..functional.contrastive import REDUCTIONS, VARIANTS
from ..functional.contrastive._checks import _tile_size
from ..functional.contrastive.supcon import _check_options, _supcon
from .contrastive import _check_bounds, _check_learnable_bounds, _clamped_exp

__all__ = ["SupConLoss"]


class SupConLoss(nn.Module):
    """Supervised contrastive loss (SupCon, Khosla et al., 2020); NT-Xent without labels.

    Every embedding is an anchor against every other one; its positives are the others with
    its label (or, without labels, the other views of its sample). ``variant="out"`` is the
    paper's L_out (mean over positives outside the log), ``"in"`` its L_in (inside). See
    :func:`mmfuse.functional.supcon_loss` for the formulas and for anchors without a positive
    (left out of the mean; never NaN). Above 1024 rows the loss runs tiled, in memory
    O(N * D + tile^2), with exact gradients.

    The temperature is stored as ``logit_scale = log(1 / temperature)`` (a buffer by default:
    the paper keeps it fixed; ``learnable=True`` makes it a parameter, clamped to
    ``[min_scale, max_scale]``, and then needs at least one bound).

    With ``gather=True`` and an initialised ``torch.distributed`` process group, every rank's
    embeddings are gathered (uneven batches allowed) and each rank returns its share of the
    loss of the global batch: the shares and their gradients sum to the single-process ones
    (see :func:`mmfuse.distributed.supcon_gathered`).

    Args:
        temperature: Softmax temperature (the paper: 0.1).
        variant: ``"out"`` or ``"in"``.
        learnable: Whether the scale is an ``nn.Parameter`` (else a buffer).
        max_scale: Upper bound of the scale ``1 / temperature``, or None.
        min_scale: Lower bound of the scale, or None.
        normalize: L2-normalise the embeddings first.
        reduction: ``"anchor"`` (mean over anchors, the paper's) or ``"pair"`` (mean over
            (anchor, positive) pairs; ``variant="out"`` only).
        chunk_size: ``"auto"``/None (tiled above 1024 rows) or an int tile size.
        gather: Gather across ``torch.distributed`` ranks when a process group is initialised.

    Shape:
        - features: (N, D) with labels (N,), or (B, V, D) (V views) with labels (B,) or None
        - weights: (N,) or (B,) float or bool, optional; 0 removes a sample
        - output: () scalar

    Example:
        >>> loss = SupConLoss(temperature=0.1)
        >>> loss(torch.randn(8, 2, 32), torch.randint(0, 3, (8,))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        temperature: float = 0.1,
        variant: str = "out",
        learnable: bool = False,
        max_scale: float | None = 100.0,
        min_scale: float | None = None,
        normalize: bool = True,
        reduction: str = "anchor",
        chunk_size: int | str | None = "auto",
        gather: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive(temperature, owner=self, arg="temperature")
        _check_bounds(min_scale, max_scale, owner=self)
        _check_learnable_bounds(learnable, min_scale, max_scale, owner=self)
        check_choice(variant, VARIANTS, owner=self, arg="variant")
        check_choice(reduction, REDUCTIONS, owner=self, arg="reduction")
        _check_options(variant, reduction, owner=self)
        _tile_size(chunk_size, 1, 1, owner=self)
        self.temperature = float(temperature)
        self.variant, self.reduction = variant, reduction
        self.learnable = bool(learnable)
        self.max_scale, self.min_scale = max_scale, min_scale
        self.normalize = bool(normalize)
        self.chunk_size = chunk_size
        self.gather = bool(gather)
        init = torch.empty((), device=device, dtype=dtype)
        if self.learnable:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1.0 / self.temperature))

    @property
    def scale(self) -> Tensor:
        """The clamped scale ``exp(logit_scale)`` (1 / temperature) used in the forward."""
        return _clamped_exp(self.logit_scale, self.min_scale, self.max_scale)

    def forward(self, features: Tensor, labels: Tensor | None = None,
                weights: Tensor | None = None) -> Tensor:
        check_inputs(self, {"features": features, "labels": labels, "weights": weights},
                     dtype=False)
        kw: dict[str, Any] = {
            "variant": self.variant, "normalize": self.normalize, "weights": weights,
            "reduction": self.reduction, "chunk_size": self.chunk_size, "owner": self,
        }
        if self.gather:
            from .. import distributed

            if distributed.is_distributed():
                return distributed.supcon_gathered(features, labels, self.scale, **kw)
        return _supcon(features, labels, self.scale, **kw)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, variant={self.variant!r}, "
            f"learnable={self.learnable}, max_scale={self.max_scale}, "
            f"min_scale={self.min_scale}, normalize={self.normalize}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size!r}, gather={self.gather}"
        )
