"""Supervised contrastive loss as a module (Khosla et al., 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._checks import check_choice, check_inputs
from .._precision import precise_output
from ..functional.contrastive import REDUCTIONS, VARIANTS
from ..functional.contrastive._checks import _tile_size
from ..functional.contrastive.supcon import _check_options, _supcon
from .contrastive import _ScaledLoss

__all__ = ["SupConLoss"]


class SupConLoss(_ScaledLoss):
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
        grad_reduction: With ``gather=True``: ``"sum"`` (each rank returns its share) or
            ``"mean"`` (DDP: every rank returns the global loss, and DDP's averaged gradient is
            the single-process one); as in :class:`~mmfuse.alignment.InfoNCELoss`.

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
        grad_reduction: str = "sum",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_choice(variant, VARIANTS, owner=self, arg="variant")
        check_choice(reduction, REDUCTIONS, owner=self, arg="reduction")
        _check_options(variant, reduction, owner=self)
        _tile_size(chunk_size, 1, 1, owner=self)
        self.variant, self.reduction = variant, reduction
        self.normalize = bool(normalize)
        self.chunk_size = chunk_size
        self._init_scale(temperature, learnable=learnable, min_scale=min_scale,
                         max_scale=max_scale, gather=gather, grad_reduction=grad_reduction,
                         device=device, dtype=dtype)

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
                return precise_output(distributed.supcon_gathered(
                    features, labels, self.scale, grad_reduction=self.grad_reduction, **kw))
        return precise_output(_supcon(features, labels, self.scale, **kw))  # float32 (autocast)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, variant={self.variant!r}, "
            f"learnable={self.learnable}, max_scale={self.max_scale}, "
            f"min_scale={self.min_scale}, normalize={self.normalize}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size!r}, gather={self.gather}"
            + (f", grad_reduction={self.grad_reduction!r}" if self.gather else "")
        )
