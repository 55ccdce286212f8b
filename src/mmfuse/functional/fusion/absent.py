"""Fusion operations shared by the fusion modules."""

from __future__ import annotations

from torch import Tensor

from ..._checks import check_batched, check_same_device, check_tensor

__all__ = ["fill_absent"]


def fill_absent(x: Tensor, observed: Tensor, fill: Tensor) -> Tensor:
    """Replace the rows of ``x`` whose sample is not observed by ``fill``.

    The result does not depend on the values of absent rows (not even NaN or inf there), and
    no gradient flows into them.

    Shape:
        - x: (B, *, D); observed: (B,) bool; fill: broadcastable to x's trailing dims, e.g. (D,)
        - output: like x
    """
    owner = "fill_absent"
    batch = check_batched(x, owner=owner, arg="x")
    check_tensor(observed, "B", owner=owner, arg="observed", floating=False, B=batch)
    if not isinstance(fill, Tensor):
        raise TypeError(
            f"{owner}: expected `fill` to be a tensor broadcastable to x's trailing dims, "
            f"got {type(fill).__name__}."
        )
    check_same_device({"x": x, "observed": observed, "fill": fill}, owner=owner)
    keep = observed.reshape(observed.shape + (1,) * (x.dim() - 1))  # (B, 1, ..., 1)
    return x.where(keep, fill.to(x.dtype))
