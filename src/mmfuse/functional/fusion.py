"""Fusion operations shared by the fusion modules."""

from __future__ import annotations

from torch import Tensor

__all__ = ["fill_absent"]


def fill_absent(x: Tensor, observed: Tensor, fill: Tensor) -> Tensor:
    """Replace the rows of ``x`` whose sample is not observed by ``fill``.

    The result does not depend on the values of absent rows (not even NaN or inf there), and
    no gradient flows into them.

    Shape:
        - x: (B, *, D); observed: (B,) bool; fill: broadcastable to x's trailing dims, e.g. (D,)
        - output: like x
    """
    keep = observed.reshape(observed.shape + (1,) * (x.dim() - 1))  # (B, 1, ..., 1)
    return x.where(keep, fill.to(x.dtype))
