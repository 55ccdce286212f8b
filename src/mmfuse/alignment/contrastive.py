"""Contrastive alignment losses as modules: InfoNCE and SigLIP with learnable scales."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_inputs, check_positive, owner_name
from .._precision import precise_output
from ..functional.contrastive import REDUCTIONS, _info_nce, _siglip
from ..functional.contrastive._checks import _tile_size

__all__ = ["InfoNCELoss", "SigLIPLoss"]

# how a training loop reduces gradients over ranks: summed, or averaged (DDP, FSDP)
_GRAD_REDUCTIONS = ("sum", "mean")


def _check_bounds(min_scale: float | None, max_scale: float | None, *, owner: object) -> None:
    if max_scale is not None:
        check_positive(max_scale, owner=owner, arg="max_scale")
    if min_scale is not None:
        check_positive(min_scale, owner=owner, arg="min_scale")
    if min_scale is not None and max_scale is not None and min_scale > max_scale:
        raise ValueError(
            f"{owner_name(owner)}: expected `min_scale` <= `max_scale`, got "
            f"min_scale={min_scale!r}, max_scale={max_scale!r}."
        )


def _check_learnable_bounds(learnable: bool, min_scale: float | None, max_scale: float | None,
                            *, owner: object) -> None:
    """A learnable temperature needs a bound (as TorchMultimodal's loss requires)."""
    if learnable and min_scale is None and max_scale is None:
        raise ValueError(
            f"{owner_name(owner)}: expected `max_scale` or `min_scale` with `learnable=True` "
            f"(an unbounded learnable scale can overflow the logits), got both None; pass a "
            f"bound (CLIP: max_scale=100) or learnable=False."
        )


def _check_grad_reduction(gather: bool, grad_reduction: object, *, owner: object) -> None:
    check_choice(grad_reduction, _GRAD_REDUCTIONS, owner=owner, arg="grad_reduction")
    if grad_reduction == "mean" and not gather:
        raise ValueError(
            f"{owner_name(owner)}: expected gather=True with grad_reduction='mean' (without "
            f"gathering, each rank's loss is already its own batch's mean), got gather=False."
        )


def _clamped_exp(log_scale: Tensor, min_scale: float | None, max_scale: float | None) -> Tensor:
    """``exp(log_scale)`` clamped functionally to [min_scale, max_scale] (either may be None)."""
    if max_scale is not None:
        log_scale = log_scale.clamp(max=math.log(max_scale))
    if min_scale is not None:
        log_scale = log_scale.clamp(min=math.log(min_scale))
    return log_scale.exp()


class _ScaledLoss(nn.Module):
    """Shared by the contrastive loss modules: the temperature stored as a clamped
    ``logit_scale = log(1 / temperature)`` (a parameter when learnable, else a buffer), and
    the checks of the options every such loss takes."""

    logit_scale: Tensor

    def _init_scale(self, temperature: float, *, learnable: bool, min_scale: float | None,
                    max_scale: float | None, gather: bool, grad_reduction: str,
                    device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        check_positive(temperature, owner=self, arg="temperature")
        _check_grad_reduction(gather, grad_reduction, owner=self)
        _check_bounds(min_scale, max_scale, owner=self)
        _check_learnable_bounds(learnable, min_scale, max_scale, owner=self)
        self.temperature = float(temperature)
        self.learnable = bool(learnable)
        self.max_scale, self.min_scale = max_scale, min_scale
        self.gather = bool(gather)
        self.grad_reduction = grad_reduction
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
        """The clamped logit scale ``exp(logit_scale)`` (1 / temperature) used in the forward."""
        return _clamped_exp(self.logit_scale, self.min_scale, self.max_scale)


class InfoNCELoss(_ScaledLoss):
    """Symmetric InfoNCE with a learnable temperature (CLIP's loss; the source's contrastive loss).

    The temperature is stored as a log logit-scale, ``logit_scale = log(1 / temperature)``, and
    used as ``exp(logit_scale)`` clamped to ``[min_scale, max_scale]`` in the forward pass (the
    parameter itself is never modified; CLIP clamps at 100). Above :data:`DEFAULT_TILE` rows the
    loss runs tiled, in memory O(B * D), with exact gradients (see
    :func:`mmfuse.functional.info_nce`).

    With ``gather=True`` and an initialised ``torch.distributed`` process group, both sides are
    gathered from every rank (batch sizes may differ) and each rank computes the loss of its own
    anchors against the global batch, divided by the global number of anchors: the losses of all
    ranks sum to the single-process loss on the concatenated batch, and so do the gradients of
    every parameter (see :func:`mmfuse.distributed.info_nce_gathered`). Without a process group,
    ``gather`` changes nothing.

    ``DistributedDataParallel`` (and FSDP) *average* the gradients over ranks. For them, set
    ``grad_reduction="mean"``: every rank then returns the loss of the whole global batch (the
    same value on every rank) and its backward is scaled by the world size, so after DDP's
    averaging every parameter holds the single-process gradient on the concatenated batch, with
    no arithmetic in the training loop, uneven per-rank batches included (docs/scaling.md).
    The default ``"sum"`` suits a loop that sums gradients over ranks itself.

    Under ``torch.autocast`` the loss is computed and returned in float32.

    Args:
        temperature: Initial temperature (the scale starts at ``1 / temperature``).
        learnable: Whether the scale is an ``nn.Parameter`` (else a buffer).
        max_scale: Upper bound of the scale, or None.
        min_scale: Lower bound of the scale, or None.
        normalize: L2-normalise the embeddings first.
        label_smoothing: Label smoothing of each cross-entropy, in [0, 1].
        direction: ``"both"``, ``"a2b"`` or ``"b2a"``.
        chunk_size: ``"auto"``/None (tiled above 1024 rows) or an int tile size.
        gather: Gather across ``torch.distributed`` ranks when a process group is initialised.
        reduction: Several positives per anchor: ``"anchor"`` (mean over each anchor's
            positives, then over anchors) or ``"pair"`` (mean over all positive pairs).
        grad_reduction: How the training loop reduces gradients over ranks with ``gather=True``:
            ``"sum"`` (each rank returns its share of the loss; the shares and their gradients
            sum to the single-process ones) or ``"mean"`` (DDP and FSDP: every rank returns the
            global loss, and DDP's averaged gradient is the single-process gradient).

    A learnable scale needs at least one bound (``max_scale`` or ``min_scale``): unbounded,
    ``exp(logit_scale)`` can grow until the logits overflow; ``learnable=False`` needs none.

    Shape:
        - a, b: (B, D), paired by row, B >= 1
        - positives: (B,) integer group ids or (B, B) bool (True = positive pair), optional
        - weights: (B,) float or bool; weight 0 removes a sample as anchor and as candidate
        - negatives: (M, D) shared or (B, M, D) per sample, optional: explicit negative keys
          (see :func:`mmfuse.functional.info_nce`)
        - output: () scalar

    Example:
        >>> loss = InfoNCELoss(temperature=0.07)
        >>> loss(torch.randn(8, 32), torch.randn(8, 32)).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        learnable: bool = True,
        max_scale: float | None = 100.0,
        min_scale: float | None = None,
        normalize: bool = True,
        label_smoothing: float = 0.0,
        direction: str = "both",
        chunk_size: int | str | None = "auto",
        gather: bool = False,
        reduction: str = "anchor",
        grad_reduction: str = "sum",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_choice(direction, ("both", "a2b", "b2a"), owner=self, arg="direction")
        check_choice(reduction, REDUCTIONS, owner=self, arg="reduction")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(
                f"InfoNCELoss: expected `label_smoothing` in [0, 1], got {label_smoothing!r}."
            )
        _tile_size(chunk_size, 1, 1, owner=self)
        self.normalize = bool(normalize)
        self.label_smoothing = float(label_smoothing)
        self.direction = direction
        self.chunk_size = chunk_size
        self.reduction = reduction
        self._init_scale(temperature, learnable=learnable, min_scale=min_scale,
                         max_scale=max_scale, gather=gather, grad_reduction=grad_reduction,
                         device=device, dtype=dtype)

    def forward(self, a: Tensor, b: Tensor, positives: Tensor | None = None,
                weights: Tensor | None = None, negatives: Tensor | None = None) -> Tensor:
        # the loss computes in the embeddings' dtype; its scale must be on their device
        check_inputs(self, {"a": a, "b": b, "positives": positives, "weights": weights,
                            "negatives": negatives}, dtype=False)
        kw: dict[str, Any] = {
            "normalize": self.normalize, "positives": positives, "weights": weights,
            "label_smoothing": self.label_smoothing, "direction": self.direction,
            "chunk_size": self.chunk_size, "owner": self, "negatives": negatives,
            "reduction": self.reduction,
        }
        if self.gather:
            from .. import distributed

            if distributed.is_distributed():
                return precise_output(distributed.info_nce_gathered(
                    a, b, self.scale, grad_reduction=self.grad_reduction, **kw))
        return precise_output(_info_nce(a, b, self.scale, **kw))  # float32 under autocast

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, learnable={self.learnable}, "
            f"max_scale={self.max_scale}, min_scale={self.min_scale}, "
            f"normalize={self.normalize}, direction={self.direction!r}, "
            f"chunk_size={self.chunk_size!r}, gather={self.gather}, "
            f"reduction={self.reduction!r}"
            + (f", grad_reduction={self.grad_reduction!r}" if self.gather else "")
        )


class SigLIPLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al., 2023) with a learnable scale and bias.

    The scale is stored as ``logit_scale = log(scale)`` and used clamped to
    ``[min_scale, max_scale]`` (no bound by default, as in the paper); the bias is stored as is.
    Above 1024 rows the loss runs tiled: training memory O(B * tile), not O(B^2).

    With ``gather=True`` and an initialised ``torch.distributed`` process group, ``b`` is
    gathered from every rank (batch sizes may differ) and each rank computes the sigmoid loss
    of its own rows of ``a`` against every rank's ``b``, divided by the global batch size: the
    losses of all ranks sum to the single-process loss on the concatenated batch, and so do the
    gradients of the embeddings, the scale and the bias (see
    :func:`mmfuse.distributed.siglip_gathered`). ``grad_reduction="mean"`` is for
    ``DistributedDataParallel`` and FSDP, which average gradients: every rank returns the
    global loss and DDP's averaged gradient is the single-process one, as for
    :class:`InfoNCELoss`. Gathered, ``positives`` may be (B,) group ids, not a matrix.
    Without a process group, ``gather`` changes nothing.

    Args:
        scale: Initial logit scale (the paper: 10).
        bias: Initial logit bias (the paper: -10).
        learnable: Whether scale and bias are parameters (else buffers).
        max_scale: Upper bound of the scale, or None.
        min_scale: Lower bound of the scale, or None.
        normalize: L2-normalise the embeddings first.
        chunk_size: ``"auto"``/None (tiled above 1024 rows) or an int tile size.
        gather: Gather ``b`` across ``torch.distributed`` ranks when a process group is
            initialised.
        grad_reduction: How the training loop reduces gradients over ranks with ``gather=True``:
            ``"sum"`` (each rank returns its share; shares and gradients sum to the
            single-process ones) or ``"mean"`` (DDP and FSDP: every rank returns the global
            loss, and DDP's averaged gradient is the single-process gradient).

    Shape:
        - a, b: (B, D), paired by row, B >= 1
        - positives: (B,) integer group ids or (B, B) bool (not with a gather across ranks),
          optional; weights: (B,)
        - output: () scalar

    Example:
        >>> loss = SigLIPLoss()
        >>> loss(torch.randn(8, 32), torch.randn(8, 32)).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        scale: float = 10.0,
        bias: float = -10.0,
        learnable: bool = True,
        max_scale: float | None = None,
        min_scale: float | None = None,
        normalize: bool = True,
        chunk_size: int | str | None = "auto",
        gather: bool = False,
        grad_reduction: str = "sum",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive(scale, owner=self, arg="scale")
        _check_grad_reduction(gather, grad_reduction, owner=self)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"SigLIPLoss: expected `bias` to be a finite number, got {bias!r}.")
        _check_bounds(min_scale, max_scale, owner=self)
        _tile_size(chunk_size, 1, 1, owner=self)
        self.init_scale, self.init_bias = float(scale), float(bias)
        self.learnable = bool(learnable)
        self.max_scale, self.min_scale = max_scale, min_scale
        self.normalize = bool(normalize)
        self.chunk_size = chunk_size
        self.gather = bool(gather)
        self.grad_reduction = grad_reduction
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        if self.learnable:
            self.logit_scale = nn.Parameter(torch.empty((), **dd))
            self.logit_bias = nn.Parameter(torch.empty((), **dd))
        else:
            self.register_buffer("logit_scale", torch.empty((), **dd))
            self.register_buffer("logit_bias", torch.empty((), **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.logit_scale.fill_(math.log(self.init_scale))
            self.logit_bias.fill_(self.init_bias)

    @property
    def scale(self) -> Tensor:
        """The clamped scale ``exp(logit_scale)`` used in the forward."""
        return _clamped_exp(self.logit_scale, self.min_scale, self.max_scale)

    def forward(self, a: Tensor, b: Tensor, positives: Tensor | None = None,
                weights: Tensor | None = None) -> Tensor:
        check_inputs(self, {"a": a, "b": b, "positives": positives, "weights": weights},
                     dtype=False)
        kw: dict[str, Any] = {"normalize": self.normalize, "positives": positives,
                              "weights": weights, "chunk_size": self.chunk_size, "owner": self}
        if self.gather:
            from .. import distributed

            if distributed.is_distributed():
                return precise_output(distributed.siglip_gathered(
                    a, b, self.scale, self.logit_bias, grad_reduction=self.grad_reduction, **kw))
        loss = _siglip(a, b, self.scale, self.logit_bias, **kw)
        return precise_output(loss)  # float32 under autocast

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"scale={self.init_scale}, bias={self.init_bias}, learnable={self.learnable}, "
            f"max_scale={self.max_scale}, min_scale={self.min_scale}, "
            f"normalize={self.normalize}, chunk_size={self.chunk_size!r}, gather={self.gather}"
            + (f", grad_reduction={self.grad_reduction!r}" if self.gather else "")
        )
