"""Training-time random absence of whole modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._checks import (
    check_presence,
    check_probability,
    check_same_device,
    format_shape,
    presence_matrix,
)
from ..errors import ModalityError, ShapeError
from ..functional import modality_dropout

__all__ = ["ModalityDropout"]


class ModalityDropout(nn.Module):
    """Randomly mark whole modalities absent while training, so fusion learns to do without.

    Returns a new presence mapping to pass on to a fusion module (the features themselves are
    untouched). In training, each observed modality of each sample is marked absent with
    probability ``p``; a sample left with fewer than ``min_present`` modalities gets dropped
    ones back, chosen at random (so by default every sample keeps at least one of the
    modalities it had). Modalities already absent stay absent. In eval mode it is the
    identity: the given presence, with missing entries filled in as True.

    Args:
        p: Probability of dropping each observed modality, in [0, 1].
        min_present: Observed modalities each sample keeps at least; 0 drops freely.
        generator: Random source for reproducible draws (on the features' device). Dynamo
            cannot trace a call that passes a generator, so with one the training-mode
            forward breaks the graph (``torch.compile(fullgraph=True)`` raises
            ``Unsupported``; plain ``torch.compile`` runs it eagerly). Without one it compiles.

    Shape:
        - features[m]: (B, ...) any layout with the batch first; present[m]: (B,) bool
        - output: ``{m: (B,) bool}`` for every modality in ``features``, True = kept

    Example:
        >>> from mmfuse.fusion import AttentionFusion
        >>> drop = ModalityDropout(0.5)
        >>> feats = {"image": torch.randn(4, 8), "text": torch.randn(4, 3)}
        >>> present = drop(feats)
        >>> AttentionFusion({"image": 8, "text": 3}, 6)(feats, present).shape
        torch.Size([4, 6])
    """

    def __init__(
        self, p: float, *, min_present: int = 1, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        check_probability(p, owner=self, arg="p", closed=True)
        if isinstance(min_present, bool) or not isinstance(min_present, int) or min_present < 0:
            raise ValueError(
                f"ModalityDropout: expected `min_present` to be a non-negative int, "
                f"got {min_present!r}."
            )
        self.p = float(p)
        self.min_present = min_present
        self.generator = generator

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        if not isinstance(features, Mapping):
            raise TypeError(
                f"ModalityDropout: expected `features` to be a mapping from modality name to "
                f"tensor, got {type(features).__name__}."
            )
        if not features:
            raise ModalityError(
                "ModalityDropout: `features` holds no modality; expected at least one, got none."
            )
        names = list(features)
        batch, first = 0, ""
        for m, x in features.items():
            if not isinstance(x, Tensor) or x.dim() == 0:
                got = format_shape(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise TypeError(
                    f"ModalityDropout: expected `features[{m!r}]` to be a tensor of shape "
                    f"(B, ...), got {got}."
                )
            if not first:
                batch, first = x.shape[0], m
            elif x.shape[0] != batch:
                raise ShapeError(
                    f"ModalityDropout: batch sizes disagree in `features`: expected "
                    f"`features[{m!r}]` with B={batch} like `features[{first!r}]`, "
                    f"got {format_shape(x.shape)}."
                )
        check_same_device({f"features[{m!r}]": x for m, x in features.items()}, owner=self)
        device = features[names[0]].device
        check_presence(present, names, batch, owner=self, device=device)
        observed = presence_matrix(features, present, names, batch, device)  # (B, M)
        if self.training and self.p > 0:
            observed = modality_dropout(
                observed, self.p, min_present=self.min_present, generator=self.generator
            )
        return {m: observed[:, j] for j, m in enumerate(names)}

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"p={self.p}, min_present={self.min_present}"
