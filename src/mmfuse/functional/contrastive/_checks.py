"""Boundary validation of the contrastive losses' arguments (private)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..._checks import check_positive, check_tensor, format_shape, owner_name
from ._common import DEFAULT_TILE, _auto_tile
from ._pairs import _Pairs

__all__ = [
    "_Inputs",
    "_as_scale",
    "_as_tensor",
    "_check_pair_inputs",
    "_check_positives",
    "_check_weights",
    "_tile_for",
    "_tile_size",
]


class _Inputs(NamedTuple):
    pairs: _Pairs
    weights: Tensor | None
    valid: Tensor | None


def _check_pair_inputs(a: object, b: object, positives: object, weights: object, *,
                       owner: object) -> _Inputs:
    """Validate paired embeddings, positives and weights; build the positive-pair spec."""
    dims = check_tensor(a, "B D", owner=owner, arg="a")
    check_tensor(b, "B D", owner=owner, arg="b", B=dims["B"], D=dims["D"])
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    n = dims["B"]
    if n == 0:
        raise ValueError(
            f"{owner_name(owner)}: expected `a` and `b` with at least one row (B >= 1), "
            f"got {format_shape(a.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"{owner_name(owner)}: expected `b` on {a.device} like `a`, got {b.device}.")
    pairs = _check_positives(positives, n, n, owner=owner)
    w, valid = _check_weights(weights, n, owner=owner)
    return _Inputs(pairs, w, valid)


def _check_positives(positives: object, n_q: int, n_k: int, *, owner: object,
                     groups_k: Tensor | None = None) -> _Pairs:
    if positives is None:
        return _Pairs("diag", n_q, n_k)
    if not isinstance(positives, Tensor):
        raise TypeError(
            f"{owner_name(owner)}: expected `positives` to be a (B,) tensor of group ids or a "
            f"(B, B) bool tensor, got {type(positives).__name__}."
        )
    if positives.dim() == 1:
        if positives.is_floating_point() or positives.is_complex() or positives.dtype == torch.bool:
            raise TypeError(
                f"{owner_name(owner)}: expected `positives` of shape (B,) to hold integer group "
                f"ids, got {positives.dtype}."
            )
        check_tensor(positives, "B", owner=owner, arg="positives", floating=None, B=n_q)
        return _Pairs("group", n_q, n_k, gq=positives,
                      gk=positives if groups_k is None else groups_k)
    check_tensor(positives, "B M", owner=owner, arg="positives", floating=False, B=n_q, M=n_k)
    return _Pairs("matrix", n_q, n_k, matrix=positives)


def _check_weights(weights: object, n: int, *, owner: object) -> tuple[Tensor | None,
                                                                       Tensor | None]:
    if weights is None:
        return None, None
    check_tensor(weights, "B", owner=owner, arg="weights", floating=None, B=n)
    assert isinstance(weights, Tensor)
    if weights.dtype == torch.bool:
        return weights, weights
    if not weights.is_floating_point():
        raise TypeError(
            f"{owner_name(owner)}: expected `weights` to be a floating or bool tensor, "
            f"got {weights.dtype}."
        )
    if not torch.compiler.is_compiling() and weights.device.type != "meta":
        _check_weight_values(weights, owner=owner)
    return weights, weights != 0


def _check_weight_values(weights: Tensor, *, owner: object) -> None:
    """Eager only (reads values): finite, non-negative, and not all zero. A negative or
    non-finite weight, or a zero sum, makes the weighted mean meaningless (-inf, NaN, 1e34)."""
    bad = ~torch.isfinite(weights) | (weights < 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{owner_name(owner)}: expected `weights` finite and non-negative, "
            f"got {float(weights[row])} at row {row}."
        )
    if weights.numel() and not bool((weights > 0).any()):
        raise ValueError(
            f"{owner_name(owner)}: expected `weights` with a positive sum, got all zeros "
            f"(a bool mask of all False leaves every pair out instead)."
        )


def _tile_size(chunk_size: object, n_q: int, n_k: int, *, owner: object) -> int | None:
    """The tile size to use, or None for the dense path."""
    if chunk_size is None or chunk_size == "auto":
        return DEFAULT_TILE if max(n_q, n_k) > DEFAULT_TILE else None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(
            f"{owner_name(owner)}: expected `chunk_size` to be a positive int, 'auto' or None, "
            f"got {chunk_size!r}."
        )
    return chunk_size


def _tile_for(chunk_size: object, like: Tensor, n_k: int, *, owner: object) -> int | None:
    """:func:`_tile_size` for ``like``'s (n_q, D) query rows against ``n_k`` keys, with
    ``"auto"``/None tiles sized from the rows, D and the threads on CPU (elsewhere, and while
    compiling, :data:`DEFAULT_TILE`)."""
    n_q, dim = like.shape[0], like.shape[-1]
    tile = _tile_size(chunk_size, n_q, n_k, owner=owner)
    if tile is None or not (chunk_size is None or chunk_size == "auto"):
        return tile
    if torch.compiler.is_compiling() or like.device.type != "cpu":
        return tile
    return _auto_tile(n_q, n_k, dim, torch.get_num_threads())


def _as_scale(temperature: float | Tensor, *, owner: object, like: Tensor) -> Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"{owner_name(owner)}: expected `temperature` to be a number or a one-element "
                f"tensor, got shape {format_shape(temperature.shape)}."
            )
        return temperature.reshape(()).reciprocal()
    check_positive(temperature, owner=owner, arg="temperature")
    return torch.tensor(1.0 / float(temperature), dtype=like.dtype, device=like.device)


def _as_tensor(x: float | Tensor, *, owner: object, arg: str, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(
                f"{owner_name(owner)}: expected `{arg}` to be a number or a one-element tensor, "
                f"got shape {format_shape(x.shape)}."
            )
        return x.reshape(())
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{owner_name(owner)}: expected `{arg}` to be a finite number, got {x!r}.")
    return torch.tensor(float(x), dtype=like.dtype, device=like.device)
