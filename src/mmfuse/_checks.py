"""The validators every mmfuse module calls at its boundary.

One place, one message style: the module, the argument, the expected layout and sizes, and what
was received, e.g. ``AttentionFusion: expected `text` of shape (B, D) with D=768, got (8, 512).``

The checks read only ``.shape``, ``.dtype`` and ``.device`` (never tensor values), so they cost
nothing measurable and become guards under ``torch.compile`` instead of graph breaks. Under
``torch.compile(fullgraph=True)`` a failing check surfaces as dynamo's ``Unsupported: Observed
exception`` rather than as the error itself; plain ``torch.compile`` falls back to eager and
raises the error below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from .errors import ModalityError, ShapeError

__all__ = [
    "check_batched",
    "check_broadcast_together",
    "check_broadcastable",
    "check_choice",
    "check_data",
    "check_dims",
    "check_features",
    "check_floating",
    "check_has_values",
    "check_heads",
    "check_inputs",
    "check_interval",
    "check_like",
    "check_mask",
    "check_positive",
    "check_presence",
    "check_probability",
    "check_same_device",
    "check_size",
    "check_tensor",
    "format_shape",
    "owner_name",
    "presence_matrix",
]


def owner_name(owner: object) -> str:
    """The name used in messages: a string as is, otherwise the class name."""
    return owner if isinstance(owner, str) else type(owner).__name__


def format_shape(shape: Iterable[int]) -> str:
    """``(8, 512)``; a 1-tuple as ``(8,)``."""
    dims = tuple(int(s) for s in shape)
    return f"({dims[0]},)" if len(dims) == 1 else "(" + ", ".join(map(str, dims)) + ")"


def _expected(layout: Sequence[str], sizes: Mapping[str, int]) -> str:
    fixed = [f"{k}={v}" for k, v in sizes.items() if k in layout]
    text = "(" + ", ".join(layout) + ")" if len(layout) != 1 else f"({layout[0]},)"
    return text + (" with " + ", ".join(fixed) if fixed else "")


def check_tensor(
    x: object,
    layout: str,
    *,
    owner: object,
    arg: str,
    floating: bool | None = True,
    **sizes: int,
) -> dict[str, int]:
    """Check ``x`` is a tensor of the given layout and return its named sizes.

    Args:
        x: The value to check.
        layout: Space-separated dimension names, e.g. ``"B N D"``.
        owner: The module (or its name) for the message.
        arg: The argument's name for the message.
        floating: True requires a floating dtype, False requires ``torch.bool``, None accepts any.
        **sizes: Sizes that must match, e.g. ``D=768, B=8``.

    Raises:
        TypeError: ``x`` is not a tensor, or has the wrong dtype kind.
        ShapeError: wrong rank or a size that disagrees with ``sizes``.
    """
    names = layout.split()
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be a tensor of shape "
            f"{_expected(names, sizes)}, got {type(x).__name__}."
        )
    if floating is True and not x.is_floating_point():
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be a floating-point tensor, got {x.dtype}."
        )
    if floating is False and x.dtype != torch.bool:
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be a torch.bool tensor "
            f"(True = keep/observed), got {x.dtype}."
        )
    if x.dim() != len(names):
        raise ShapeError(
            f"{owner_name(owner)}: expected `{arg}` of shape {_expected(names, sizes)}, "
            f"got {format_shape(x.shape)}."
        )
    bound: dict[str, int] = {}
    for name, size in zip(names, x.shape):
        want = sizes.get(name, bound.get(name))
        if want is not None and size != want:
            raise ShapeError(
                f"{owner_name(owner)}: expected `{arg}` of shape {_expected(names, sizes)}, "
                f"got {format_shape(x.shape)}."
            )
        bound[name] = size
    return bound


def check_batched(x: object, *, owner: object, arg: str) -> int:
    """Check ``x`` is a tensor of shape (B, *) (any dtype, at least one dimension); return B."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        got = format_shape(x.shape) if isinstance(x, Tensor) and x.dim() else (
            "a 0-d tensor" if isinstance(x, Tensor) else type(x).__name__)
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be a tensor of shape (B, ...), got {got}."
        )
    return cast(int, x.shape[0])  # not int(): under torch.export a symbolic batch stays symbolic


def check_features(
    features: object,
    dims: Mapping[str, int],
    *,
    owner: object,
    arg: str = "features",
    layout: str = "B D",
    allow_missing: bool = False,
) -> int:
    """Check a modality mapping against the declared ``dims`` and return the batch size B.

    Each ``features[m]`` must be a floating tensor of ``layout`` whose last dimension is
    ``dims[m]``; the first dimension (B) must agree across modalities and so must the devices.
    Dimensions named between the first and last (e.g. N in ``"B N D"``) may differ per modality.

    Args:
        features: The mapping received.
        dims: Declared size per modality, in the module's order.
        owner: The module (or its name) for messages.
        arg: The argument's name for messages.
        layout: Space-separated layout of every tensor; first is the batch, last the features.
        allow_missing: Whether declared modalities may be left out (they are then absent).

    Raises:
        TypeError: not a mapping, a value that is not a floating tensor.
        ModalityError: unknown names, missing names (unless allowed), or an empty mapping.
        ShapeError: wrong rank, wrong feature size, batch sizes that disagree.
        ValueError: tensors on different devices.
    """
    name = owner_name(owner)
    if not isinstance(features, Mapping):
        raise TypeError(
            f"{name}: expected `{arg}` to be a mapping from modality name to tensor, "
            f"got {type(features).__name__}."
        )
    expected = list(dims)
    unknown = [k for k in features if k not in dims]
    if unknown:
        raise ModalityError(
            f"{name}: unknown modality {sorted(map(str, unknown))} in `{arg}`; "
            f"expected names from {expected}, got {list(map(str, features))}."
        )
    missing = [k for k in expected if k not in features]
    if missing and not allow_missing:
        raise ModalityError(
            f"{name}: missing modality {missing} in `{arg}`; expected {expected}, "
            f"got {list(features)}."
        )
    if len(missing) == len(expected):
        raise ModalityError(
            f"{name}: `{arg}` holds no modality; expected at least one of {expected}, got none."
        )
    letters = layout.split()
    batch_letter, feat_letter = letters[0], letters[-1]
    batch: int | None = None
    first: str | None = None
    device: torch.device | None = None
    for m in expected:
        if m not in features:
            continue
        x = features[m]
        fixed = {feat_letter: dims[m]}
        if batch is not None:
            fixed[batch_letter] = batch
        try:
            bound = check_tensor(x, layout, owner=owner, arg=f"{arg}[{m!r}]", **cast(Any, fixed))
        except ShapeError:
            if batch is not None and isinstance(x, Tensor) and x.dim() == len(letters) and (
                x.shape[-1] == dims[m]
            ):
                raise ShapeError(
                    f"{name}: batch sizes disagree in `{arg}`: expected `{arg}[{m!r}]` of shape "
                    f"{_expected(letters, fixed)} like `{arg}[{first!r}]`, "
                    f"got {format_shape(x.shape)}."
                ) from None
            raise
        if batch is None:
            batch, first, device = bound[batch_letter], m, x.device
        elif x.device != device:
            raise ValueError(
                f"{name}: tensors of `{arg}` are on different devices: expected "
                f"`{arg}[{m!r}]` on {device} like `{arg}[{first!r}]`, got {x.device}."
            )
    return cast(int, batch)  # set by the first present modality, and one is present


def check_presence(
    present: object,
    dims: Mapping[str, int] | Sequence[str],
    batch: int,
    *,
    owner: object,
    arg: str = "present",
    device: torch.device | None = None,
) -> None:
    """Check a presence mapping: each ``present[m]`` a (B,) bool tensor, True = observed."""
    if present is None:
        return
    name = owner_name(owner)
    if not isinstance(present, Mapping):
        raise TypeError(
            f"{name}: expected `{arg}` to be a mapping from modality name to a (B,) bool tensor, "
            f"got {type(present).__name__}."
        )
    unknown = [k for k in present if k not in dims]
    if unknown:
        raise ModalityError(
            f"{name}: unknown modality {sorted(map(str, unknown))} in `{arg}`; "
            f"expected names from {list(dims)}, got {list(map(str, present))}."
        )
    for m, p in present.items():
        check_tensor(p, "B", owner=owner, arg=f"{arg}[{m!r}]", floating=False, B=batch)
        if device is not None and p.device != device:
            raise ValueError(
                f"{name}: expected `{arg}[{m!r}]` on {device} like the features, got {p.device}."
            )


def presence_matrix(
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None,
    names: Sequence[str],
    batch: int,
    device: torch.device,
) -> Tensor:
    """(B, M) bool, True where modality ``names[j]`` is observed for sample i.

    A name missing from ``features`` is absent for the whole batch. Call after
    :func:`check_features` and :func:`check_presence`.
    """
    cols = []
    for m in names:
        if m not in features:
            cols.append(torch.zeros(batch, dtype=torch.bool, device=device))
        elif present is not None and m in present:
            cols.append(present[m])
        else:
            cols.append(torch.ones(batch, dtype=torch.bool, device=device))
    return torch.stack(cols, dim=1)  # (B, M)


def check_mask(
    mask: object,
    *,
    owner: object,
    arg: str,
    layout: str = "B N",
    device: torch.device | None = None,
    **sizes: int,
) -> dict[str, int] | None:
    """Check a bool token mask (True = keep). ``None`` passes and returns None."""
    if mask is None:
        return None
    bound = check_tensor(mask, layout, owner=owner, arg=arg, floating=False, **sizes)
    if device is not None and isinstance(mask, Tensor) and mask.device != device:
        raise ValueError(
            f"{owner_name(owner)}: expected `{arg}` on {device} like the inputs, "
            f"got {mask.device}."
        )
    return bound


def check_same_device(tensors: Mapping[str, Tensor | None], *, owner: object) -> None:
    """All given tensors on one device; the message names the first pair that disagrees."""
    first: tuple[str, Tensor] | None = None
    for arg, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = (arg, t)
        elif t.device != first[1].device:
            raise ValueError(
                f"{owner_name(owner)}: expected `{arg}` on {first[1].device} like "
                f"`{first[0]}`, got {t.device}."
            )


# ----------------------------------------------------------------------------- dtype and device

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla")


def _reference(module: torch.nn.Module) -> Tensor | None:
    """The first floating parameter or buffer (else the first of any dtype, else None): the
    dtype and device the module computes in."""
    first: Tensor | None = None
    for t in module.parameters():
        if t.is_floating_point():
            return t
        first = t if first is None else first
    for b in module.buffers():
        if b.is_floating_point():
            return b
        first = b if first is None else first
    return first


def _autocast_accepts(t: Tensor) -> bool:
    """``t`` is in the dtype autocast computes in on its device, with autocast enabled there."""
    kind = t.device.type
    return (
        kind in _AUTOCAST_DEVICES
        and torch.is_autocast_enabled(kind)
        and t.dtype == torch.get_autocast_dtype(kind)
    )


def _flatten(tensors: Mapping[str, object]) -> list[tuple[str, Tensor]]:
    out: list[tuple[str, Tensor]] = []
    for arg, value in tensors.items():
        if isinstance(value, Tensor):
            out.append((arg, value))
        elif isinstance(value, Mapping):
            out.extend((f"{arg}[{k!r}]", v) for k, v in value.items() if isinstance(v, Tensor))
    return out


def check_inputs(
    module: torch.nn.Module | None,
    tensors: Mapping[str, object],
    *,
    owner: object | None = None,
    dtype: bool = True,
) -> None:
    """Floating inputs share the module's dtype and device, and every input its device.

    The reference is the module's first floating parameter or buffer (once per call); a module
    with none compares its inputs with the first floating one given. Under autocast, an input in
    the autocast dtype of its device is accepted as well. Call after the shape checks.

    Args:
        module: The module whose parameters and buffers set the dtype and device; None for a
            function (its inputs are compared with each other; ``owner`` names it).
        tensors: Argument name -> tensor, ``None`` (skipped) or a mapping of tensors (each
            named ``arg['key']``). Non-floating tensors (masks, indices) are checked for device
            only.
        owner: The name in messages (default: the module's class name).
        dtype: False checks devices only, for modules that compute in their input's dtype.

    Raises:
        TypeError: a floating input in another dtype.
        ValueError: an input on another device.
    """
    name = owner_name(module if owner is None else owner)
    ref = None if module is None else _reference(module)
    ref_arg = "the module's parameters"
    items = _flatten(tensors)
    if ref is None or not ref.is_floating_point():
        first = next(((a, t) for a, t in items if t.is_floating_point()), None)
        if first is not None:
            ref_arg, ref = f"`{first[0]}`", first[1]
    if ref is None:
        return
    floating_ref = ref.is_floating_point()
    for arg, t in items:
        bad_device = t.device != ref.device
        bad_dtype = (
            dtype
            and floating_ref
            and t.is_floating_point()
            and t.dtype != ref.dtype
            and not _autocast_accepts(t)
        )
        if bad_device or bad_dtype:
            if dtype and floating_ref and t.is_floating_point():
                want, got = f"of dtype {ref.dtype} on {ref.device}", f"{t.dtype} on {t.device}"
            else:
                want, got = f"on {ref.device}", f"{t.device}"
            error = ValueError if bad_device else TypeError
            raise error(f"{name}: expected `{arg}` {want} like {ref_arg}, got {got}.")


def check_has_values(x: Tensor, *, owner: object, arg: str) -> None:
    """``x`` holds values a result can be read from: not a meta tensor (shapes only), which a
    function returning Python numbers cannot compute."""
    if x.device.type == "meta":
        raise ValueError(
            f"{owner_name(owner)}: expected `{arg}` with values to compute from, got a tensor on "
            f"the meta device (shapes only)."
        )


# ----------------------------------------------------------------------------- configuration


def check_size(
    value: Any, *, owner: object, arg: str, allow_zero: bool = False, optional: bool = False
) -> int:
    """A size: a positive (or non-negative) int; bool, float and other types refused.

    Raises:
        TypeError: not an int (a bool or a float such as ``2.0`` included).
        ValueError: zero or negative.
    """
    if optional and value is None:
        return cast(int, None)
    want = "a non-negative" if allow_zero else "a positive"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner_name(owner)}: expected `{arg}` to be {want} int, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner_name(owner)}: expected `{arg}` to be {want} int, got {value!r}.")
    return int(value)


def check_dims(dims: object, *, owner: object, arg: str = "dims") -> dict[str, int]:
    """Validate a constructor's ``dims`` mapping and return a plain ordered dict copy."""
    name = owner_name(owner)
    if not isinstance(dims, Mapping) or not dims:
        raise TypeError(
            f"{name}: expected `{arg}` to be a non-empty mapping from modality name to feature "
            f"size, e.g. {{'image': 2048, 'text': 768}}, got {dims!r}."
        )
    out: dict[str, int] = {}
    for m, d in dims.items():
        if not isinstance(m, str) or not m:
            raise TypeError(f"{name}: modality names in `{arg}` must be non-empty str, got {m!r}.")
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ValueError(
                f"{name}: expected `{arg}[{m!r}]` to be a positive int, got {d!r}."
            )
        out[m] = int(d)
    return out


def check_positive(
    value: Any, *, owner: object, arg: str, allow_zero: bool = False, finite: bool = True
) -> None:
    """A positive (or non-negative) number; bools and NaN rejected, and infinity unless
    ``finite=False``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if allow_zero else value > 0) or (  # NaN fails both
        finite and not math.isfinite(value)
    ):
        want = "a non-negative" if allow_zero else "a positive"
        if ok and finite and value == math.inf:
            want = "a finite positive"
        raise ValueError(f"{owner_name(owner)}: expected `{arg}` to be {want} number, got {value!r}.")


def check_choice(value: Any, choices: Iterable[Any], *, owner: object, arg: str) -> None:
    """``value`` must be one of ``choices``; the message lists them."""
    options = list(choices)
    if value not in options:
        raise ValueError(
            f"{owner_name(owner)}: unknown `{arg}` {value!r}; expected one of {options}."
        )


def check_probability(value: Any, *, owner: object, arg: str, closed: bool = False) -> None:
    """A probability: a number in [0, 1), or in [0, 1] with ``closed=True``; bools and NaN rejected.

    ``[0, 1)`` suits dropout rates (1 would drop everything); ``[0, 1]`` suits a probability that
    may be certain.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 <= value <= 1 if closed else 0 <= value < 1):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{owner_name(owner)}: expected `{arg}` in {interval}, got {value!r}.")


def check_heads(dim: Any, num_heads: Any, *, owner: object, arg: str = "dim") -> None:
    """Multi-head attention sizes: ``dim`` (named ``arg``) and ``num_heads`` positive, and
    ``num_heads`` divides ``dim``."""
    check_size(dim, owner=owner, arg=arg)
    check_size(num_heads, owner=owner, arg="num_heads")
    if dim % num_heads:
        raise ValueError(
            f"{owner_name(owner)}: expected `num_heads` to divide {arg}={dim}, got {num_heads}."
        )


# ----------------------------------------------------------------------------- any-rank tensors


def _shape_text(shape: Iterable[int]) -> str:
    dims = tuple(shape)
    return format_shape(dims) if dims else "()"


def check_floating(x: object, *, owner: object, arg: str) -> None:
    """``x`` is a floating-point tensor of any shape."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be a floating-point tensor, "
            f"got {type(x).__name__}."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be a floating-point tensor, got {x.dtype}."
        )


def check_data(x: object, *, owner: object, arg: str) -> int:
    """``x`` is a floating tensor of shape (B, ...) (at least one dimension); return B."""
    batch = check_batched(x, owner=owner, arg=arg)
    check_floating(x, owner=owner, arg=arg)
    return batch


def check_like(
    x: object, ref: Tensor, *, owner: object, arg: str, ref_arg: str, floating: bool = True
) -> None:
    """``x`` is a tensor with the shape and device of ``ref`` (and a floating dtype unless
    ``floating=False``)."""
    name = owner_name(owner)
    want = _shape_text(ref.shape)
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name}: expected `{arg}` to be a tensor of shape {want} like `{ref_arg}`, "
            f"got {type(x).__name__}."
        )
    if floating:
        check_floating(x, owner=owner, arg=arg)
    if x.shape != ref.shape:
        raise ShapeError(
            f"{name}: expected `{arg}` of shape {want} like `{ref_arg}`, "
            f"got {_shape_text(x.shape)}."
        )
    check_same_device({ref_arg: ref, arg: x}, owner=owner)


def check_broadcastable(x: Tensor, ref: Tensor, *, owner: object, arg: str, ref_arg: str) -> None:
    """``x`` broadcasts to ``ref``'s shape without changing it (sizes equal or 1, aligned from
    the right, no more dimensions than ``ref``)."""
    ok = x.dim() <= ref.dim() and all(
        a in (1, b) for a, b in zip(reversed(x.shape), reversed(ref.shape))
    )
    if not ok:
        raise ShapeError(
            f"{owner_name(owner)}: expected `{arg}` broadcastable to `{ref_arg}` of shape "
            f"{_shape_text(ref.shape)}, got {_shape_text(x.shape)}."
        )


def check_interval(
    value: Any, low: float, high: float, *, owner: object, arg: str
) -> None:
    """A number in the open interval (low, high); bools and NaN rejected."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (low < value < high):
        raise ValueError(
            f"{owner_name(owner)}: expected `{arg}` in ({low:g}, {high:g}), got {value!r}."
        )


def check_broadcast_together(tensors: Mapping[str, Tensor], *, owner: object) -> None:
    """The tensors broadcast against each other (sizes equal or 1, aligned from the right).

    SymInt-safe: sizes are compared pairwise, never hashed (a symbolic size is unhashable, and a
    traced size is hashed by identity), so a dynamic batch stays symbolic under ``torch.export``.
    """
    rank = max(t.dim() for t in tensors.values())
    for i in range(1, rank + 1):
        want = None  # the first size other than 1 at this position
        for t in tensors.values():
            if t.dim() < i or t.shape[-i] == 1:
                continue
            if want is None:
                want = t.shape[-i]
            elif t.shape[-i] != want:
                names = ", ".join(f"`{a}`" for a in tensors)
                got = ", ".join(_shape_text(u.shape) for u in tensors.values())
                raise ShapeError(
                    f"{owner_name(owner)}: expected {names} to broadcast together, got {got}."
                )
