"""Late fusion: one model per modality, their predictions merged by DecisionFusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .._checks import (
    check_batched,
    check_dims,
    check_features,
    check_inputs,
    check_presence,
    check_tensor,
    format_shape,
    owner_name,
)
from ..errors import ModalityError, ShapeError
from ..functional import fill_absent
from .decision_level import DecisionFusion

__all__ = ["LateFusion"]


class LateFusion(nn.Module):
    """Per-modality models whose class predictions :class:`DecisionFusion` merges.

    ``models[m]`` maps modality m's input, (B, ...), to (B, C) logits (or probabilities with
    ``inputs="probs"``); the predictions of the modalities present for each sample are fused by
    a :class:`DecisionFusion` (``self.decision``; every strategy, weights and temperatures
    as there).

    Missing modalities: a modality left out of ``inputs`` is not run. One marked absent for
    some samples by ``present`` is run on the whole batch with those samples' inputs zeroed
    first (so their values, even NaN, reach neither the output nor a gradient) and its
    predictions for them drop out of the fusion; the rest renormalise. A sample with nothing
    present gets the uniform distribution ``1/C``. The result for a subset of modalities equals
    the result given only that subset.

    Args:
        models: One module per modality, in the order the module uses.
        num_classes: Number of classes C.
        dims: Feature size per modality when every input is a (B, D_m) vector: the inputs are
            then checked at the boundary like the feature-level modules'. None accepts any
            (B, ...) tensor per modality (any dtype, e.g. token ids) and leaves the shape
            checks to the models.
        **decision: Keyword arguments of :class:`DecisionFusion` (``strategy``, ``weights``,
            ``learnable``, ``inputs`` (default ``"logits"`` here), ``temperature``,
            ``learn_temperature``).

    Shape:
        - inputs[m]: (B, D_m) with ``dims``, else (B, ...); present[m]: (B,) bool
        - output: (B, C) probabilities, rows summing to 1

    Example:
        >>> f = LateFusion({"image": nn.Linear(8, 3), "text": nn.Linear(4, 3)}, 3)
        >>> p = f({"image": torch.randn(2, 8), "text": torch.randn(2, 4)},
        ...       present={"text": torch.tensor([True, False])})
        >>> p.shape, bool(torch.allclose(p.sum(-1), torch.ones(2)))
        (torch.Size([2, 3]), True)
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        num_classes: int,
        *,
        dims: Mapping[str, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **decision: Any,
    ) -> None:
        super().__init__()
        if not isinstance(models, Mapping) or not models:
            raise TypeError(
                f"LateFusion: expected `models` to be a non-empty mapping from modality name to "
                f"nn.Module, got {models!r}."
            )
        for m, model in models.items():
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"LateFusion: expected `models[{m!r}]` to be an nn.Module, "
                    f"got {type(model).__name__}."
                )
        self.models = nn.ModuleDict(dict(models))
        self.modalities = list(models)
        self.dims = None if dims is None else check_dims(dims, owner=self)
        if self.dims is not None and list(self.dims) != self.modalities:
            raise ModalityError(
                f"LateFusion: expected `dims` to name the modalities of `models` in their order, "
                f"{self.modalities}, got {list(self.dims)}."
            )
        self.decision = DecisionFusion(self.modalities, num_classes,
                                       **{"inputs": "logits", **decision},
                                       device=device, dtype=dtype)
        self.num_classes = self.out_dim = num_classes

    def reset_parameters(self) -> None:
        for model in self.models.values():
            reset = getattr(model, "reset_parameters", None)
            if callable(reset):
                reset()
        self.decision.reset_parameters()

    def forward(
        self, inputs: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        batch = self._check_inputs(inputs)
        ref = next(inputs[m] for m in self.modalities if m in inputs)
        check_presence(present, self.modalities, batch, owner=self, device=ref.device)
        predictions: dict[str, Tensor] = {}
        for m in self.modalities:
            if m not in inputs:
                continue
            x = inputs[m]
            # dtype and device against this modality's model (integer inputs: device only)
            check_inputs(self.models[m], {f"inputs[{m!r}]": x}, owner=self)
            if present is not None and m in present:
                x = fill_absent(x, present[m], x.new_zeros(()))
            out = self.models[m](x)
            check_tensor(out, "B C", owner=self, arg=f"models[{m!r}] output", B=batch,
                         C=self.num_classes)
            predictions[m] = out  # (B, C)
        return self.decision(predictions, present)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def _check_inputs(self, inputs: object) -> int:
        """The batch size of ``inputs``, after the boundary checks."""
        if self.dims is not None:
            return check_features(inputs, self.dims, owner=self, arg="inputs", allow_missing=True)
        name = owner_name(self)
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"{name}: expected `inputs` to be a mapping from modality name to tensor, "
                f"got {type(inputs).__name__}."
            )
        unknown = [k for k in inputs if k not in self.modalities]
        if unknown or not inputs:
            raise ModalityError(
                f"{name}: expected `inputs` to hold modalities from {self.modalities}, "
                f"got {list(map(str, inputs))}."
            )
        first = next(m for m in self.modalities if m in inputs)
        check_batched(inputs[first], owner=self, arg=f"inputs[{first!r}]")
        batch = inputs[first].shape[0]  # not int(): a symbolic batch stays symbolic
        for m in self.modalities:
            if m not in inputs or m == first:
                continue
            x = inputs[m]
            check_batched(x, owner=self, arg=f"inputs[{m!r}]")
            if x.shape[0] != batch:
                raise ShapeError(
                    f"{name}: batch sizes disagree in `inputs`: expected `inputs[{m!r}]` of "
                    f"shape (B, ...) with B={batch} like `inputs[{first!r}]`, "
                    f"got {format_shape(x.shape)}."
                )
            if x.device != inputs[first].device:
                raise ValueError(
                    f"{name}: tensors of `inputs` are on different devices: expected "
                    f"`inputs[{m!r}]` on {inputs[first].device} like `inputs[{first!r}]`, "
                    f"got {x.device}."
                )
        return cast(int, batch)

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, num_classes={self.num_classes}, dims={self.dims}"
