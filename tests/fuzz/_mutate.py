"""The fuzz engine: draw a mutation of a target's valid inputs, call it, judge the outcome.

Every call must end in one of two ways:

- it returns, within the time bound; then an all-absent row (or a fully masked token) whose
  values were NaN gives a finite output, a non-contiguous or expanded copy of an input gives the
  same output, and an output computed from a meta input is itself a meta tensor (never values
  read from uninitialised memory);
- or it raises the library's own boundary error: ``ShapeError``/``ModalityError``/
  ``TypeError``/``ValueError``, raised by a ``raise`` statement in mmfuse's code, with a
  one-line message that starts with the name of the module or function called.

Anything else (an error from deep inside torch or einops, a Python ``AttributeError``, a
message naming nothing, a hang) fails the example, printing the mutation that caused it.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

import mmfuse
from contract.checks import get_path, set_path, tree_map, tree_tensors
from mmfuse import ModalityError, ShapeError

from ._targets import Target

__all__ = ["PER_EXAMPLE_S", "fuzz_one", "judge_error"]

#: Seconds one call may take before the example counts as a hang.
PER_EXAMPLE_S = float(os.environ.get("MMFUSE_FUZZ_TIMEOUT", "30"))

LIBRARY_ERRORS = (ShapeError, ModalityError, TypeError, ValueError)
_SRC = str(FsPath(mmfuse.__file__).resolve().parent)

DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool, torch.float32]

MUTATIONS = [
    "valid", "dtype", "all_dtype", "module_dtype", "rank_up", "rank_down", "size", "batch",
    "zero_size", "nan", "noncontiguous", "expanded", "meta", "all_meta", "names", "type",
    "absent_nan", "masked_nan",
]


class Hang(AssertionError):
    """A call did not return within :data:`PER_EXAMPLE_S`."""


def call_bounded(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` in a worker thread; raise :class:`Hang` if it outlives the bound. The worker's
    result or exception is handed back to the caller."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["exc"] = exc

    worker = threading.Thread(target=work, daemon=True, name="mmfuse-fuzz")
    worker.start()
    worker.join(PER_EXAMPLE_S)
    if worker.is_alive():
        raise Hang(f"{what}: still running after {PER_EXAMPLE_S:g} s")
    if "exc" in box:
        raise box["exc"]
    return box.get("out")


def judge_error(exc: BaseException, names: frozenset[str], what: str) -> None:
    """Raise AssertionError unless ``exc`` is a one-line boundary error of the library naming
    one of ``names``."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    where = f"{last.filename}:{last.lineno}" if last else "?"
    message = str(exc)
    detail = f"{what}: {type(exc).__name__}: {message[:300]!r} at {where}"
    if not isinstance(exc, LIBRARY_ERRORS):
        raise AssertionError(f"deep error (not a boundary error) from {detail}") from exc
    if last is None or not str(FsPath(last.filename).resolve()).startswith(_SRC):
        raise AssertionError(f"error raised outside mmfuse from {detail}") from exc
    if not (last.line or "").lstrip().startswith("raise"):
        raise AssertionError(f"error raised by a call inside mmfuse, not its checks, {detail}") \
            from exc
    if "\n" in message:
        raise AssertionError(f"multi-line message from {detail}") from exc
    owner = message.split(":", 1)[0]
    if owner not in names:
        raise AssertionError(
            f"message names {owner!r}, not the callable ({sorted(names)}), from {detail}"
        ) from exc


# ----------------------------------------------------------------------------- mutations


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths to every tensor in a kwargs tree (dicts only; lists and tuples left whole)."""
    if isinstance(obj, Tensor):
        return [prefix]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _paths(v, (*prefix, k))]
    return []


def _like(t: Tensor, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """A fresh tensor of ``t``'s dtype and device with ``shape`` (valid values: True masks,
    small non-negative ints, random floats)."""
    if t.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool, device=t.device)
    if not t.is_floating_point():
        return torch.zeros(shape, dtype=t.dtype, device=t.device)
    return torch.randn(shape, generator=gen).to(t.device, t.dtype)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.device.type != "meta" else torch.empty(t.shape, dtype=dtype,
                                                                   device="meta")


def mutate(draw: Any, target: Target, kwargs: dict[str, Any], batch: int,
           gen: torch.Generator) -> tuple[str, dict[str, Any], torch.dtype]:
    """Draw one mutation; return (description, kwargs, module dtype)."""
    kind = draw(st.sampled_from(MUTATIONS), label="mutation")
    paths = [p for p in _paths(kwargs) if p[0] not in target.opaque]
    module_dtype = torch.float32
    if not paths:
        return "valid (no tensors)", kwargs, module_dtype
    path = draw(st.sampled_from(paths), label="path")
    t = get_path(kwargs, path)
    name = "/".join(map(str, path))
    if kind == "dtype":
        dtype = draw(st.sampled_from(DTYPES), label="dtype")
        return f"{name} as {dtype}", set_path(kwargs, path, _cast(t, dtype)), module_dtype
    if kind == "all_dtype":
        dtype = draw(st.sampled_from(DTYPES[:3]), label="dtype")
        out = {k: v if k in target.opaque else tree_map(
            lambda x: x.to(dtype) if x.is_floating_point() else x, v) for k, v in kwargs.items()}
        return f"every floating input as {dtype}", out, module_dtype
    if kind == "module_dtype":
        module_dtype = draw(st.sampled_from([torch.float64, torch.bfloat16]), label="dtype")
        return f"module in {module_dtype}, inputs float32", kwargs, module_dtype
    if kind == "rank_up":
        dim = draw(st.integers(0, t.dim()), label="dim")
        return f"{name} unsqueezed at {dim}", set_path(kwargs, path, t.unsqueeze(dim)), module_dtype
    if kind == "rank_down" and t.dim() > 0:
        dim = draw(st.integers(0, t.dim() - 1), label="dim")
        shape = t.shape[:dim] + t.shape[dim + 1:]
        return f"{name} without dim {dim}", set_path(kwargs, path, _like(t, shape, gen)), \
            module_dtype
    if kind in ("size", "batch", "zero_size") and t.dim() > 0:
        dim = 0 if kind == "batch" else draw(st.integers(0, t.dim() - 1), label="dim")
        size = 0 if kind == "zero_size" else max(0, t.shape[dim] + draw(
            st.sampled_from([-1, 1, 3]), label="delta"))
        shape = (*t.shape[:dim], size, *t.shape[dim + 1:])
        return f"{name} with size {size} at dim {dim}", \
            set_path(kwargs, path, _like(t, shape, gen)), module_dtype
    if kind == "nan" and t.is_floating_point():
        return f"{name} all NaN", set_path(kwargs, path, torch.full_like(t, float("nan"))), \
            module_dtype
    if kind == "noncontiguous" and t.dim() >= 1:
        # same values, strides of a transposed (or strided) view
        nc = t.mT.contiguous().mT if t.dim() >= 2 else torch.stack([t, t], -1)[..., 0]
        return f"{name} non-contiguous", set_path(kwargs, path, nc), module_dtype
    if kind == "expanded" and t.dim() >= 1 and t.shape[0] >= 1:
        return f"{name} expanded from its first row", \
            set_path(kwargs, path, t[:1].expand_as(t)), module_dtype
    if kind == "meta":
        return f"{name} on meta", set_path(kwargs, path, t.to("meta")), module_dtype
    if kind == "all_meta":
        out = {k: v if k in target.opaque else tree_map(lambda x: x.to("meta"), v)
               for k, v in kwargs.items()}
        return "every input on meta", out, module_dtype
    if kind == "names" and len(path) >= 2:
        parent = get_path(kwargs, path[:-1])
        how = draw(st.sampled_from(["unknown", "drop", "empty", "int"]), label="how")
        new = dict(parent)
        if how == "unknown":
            new["zz_unknown"] = t
        elif how == "drop":
            new.pop(path[-1])
        else:
            new[("" if how == "empty" else 7)] = new.pop(path[-1])
        return f"{'/'.join(map(str, path[:-1]))} key {path[-1]!r}: {how}", \
            set_path(kwargs, path[:-1], new), module_dtype
    if kind == "type":
        value = draw(st.sampled_from(["list", "float", "str", "none"]), label="as")
        replaced = {"list": t.tolist() if t.numel() < 4096 else [1.0], "float": 1.5, "str": "x",
                    "none": None}[value]
        return f"{name} as {value}", set_path(kwargs, path, replaced), module_dtype
    return "valid", kwargs, module_dtype


# ----------------------------------------------------------------------------- the engine


def _absent_nan(target: Target, kwargs: dict[str, Any], batch: int,
                gen: torch.Generator) -> tuple[dict[str, Any], Tensor] | None:
    """Row 0 with every modality absent and NaN values; other rows random presence. Returns
    the kwargs and the (B,) rows expected finite, or None if the target has no presence."""
    if target.presence_arg is None or target.features_arg is None or batch == 0:
        return None
    feats = get_path(kwargs, (target.features_arg,))
    present = {}
    for m in feats:
        p = torch.rand(batch, generator=gen) < 0.6
        p[0] = False
        present[m] = p
    new_feats = {m: x.where(present[m].view(-1, *[1] * (x.dim() - 1)), float("nan"))
                 for m, x in feats.items()}
    out = set_path(kwargs, (target.features_arg,), new_feats)
    out = set_path(out, (target.presence_arg,), present)
    return out, torch.ones(batch, dtype=torch.bool)


def _masked_nan(target: Target, kwargs: dict[str, Any], batch: int,
                gen: torch.Generator) -> dict[str, Any] | None:
    """Every token mask random with row 0 fully masked; masked tokens' values NaN."""
    if not target.masks or batch == 0:
        return None
    out = kwargs
    for mask_path, data_path in target.masks.items():
        try:
            mask, data = get_path(kwargs, mask_path), get_path(kwargs, data_path)
        except KeyError:  # an optional mask the valid inputs leave out: add one
            mask, data = None, get_path(kwargs, data_path)
        if data is None:
            continue
        if mask is None:
            mask = torch.ones(data.shape[:2], dtype=torch.bool)
        keep = torch.rand(mask.shape, generator=gen) < 0.6
        keep[0] = False
        lead = keep.view(*keep.shape, *[1] * (data.dim() - keep.dim()))
        out = set_path(out, mask_path, keep)
        out = set_path(out, data_path, data.where(lead, float("nan")))
    return out


def fuzz_one(target: Target, data: Any) -> None:
    """One example: draw a batch, a seed and a mutation; call the target; judge."""
    batch = data.draw(st.integers(0, 4), label="batch")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    gen = torch.Generator().manual_seed(seed)
    kwargs = target.inputs(batch, gen)
    kind = data.draw(st.sampled_from(["mutate", "absent_nan", "masked_nan"]), label="family")
    finite_rows: Tensor | None = None
    module_dtype = torch.float32
    if kind == "absent_nan" and (made := _absent_nan(target, kwargs, batch, gen)) is not None:
        kwargs, finite_rows = made
        what = "all-absent row 0 with NaN values"
    elif kind == "masked_nan" and (masked := _masked_nan(target, kwargs, batch, gen)) is not None:
        kwargs, finite_rows = masked, torch.ones(batch, dtype=torch.bool)
        what = "row 0 fully masked, masked tokens NaN"
    else:
        what, kwargs, module_dtype = mutate(data.draw, target, kwargs, batch, gen)
    what = f"{target.id} (B={batch}, seed={seed}): {what}"
    torch.manual_seed(0)
    fn = target.build(module_dtype)
    if isinstance(fn, torch.nn.Module):
        fn.eval()
    try:
        out = call_bounded(lambda: fn(**kwargs), what)
    except Hang:
        raise
    except Exception as exc:  # judged: only the library's boundary errors pass
        judge_error(exc, target.names, what)
        return
    result = target.output(out)
    if result is None:
        return
    inputs_meta = any(t.device.type == "meta" for t in tree_tensors(kwargs))
    if inputs_meta and result.device.type != "meta":
        raise AssertionError(f"{what}: a meta input gave a {result.device} output (values read "
                             f"from no data)")
    if finite_rows is not None and result.device.type != "meta" and result.dim() > 0 and (
        result.shape[0] == batch
    ):
        rows = result[finite_rows]
        if rows.is_floating_point() and not bool(torch.isfinite(rows).all()):
            raise AssertionError(f"{what}: non-finite output where every value was absent or "
                                 f"masked")
    if what.endswith("non-contiguous") and result.device.type != "meta":
        dense = tree_map(lambda x: x.contiguous(), kwargs)
        want = target.output(call_bounded(lambda: fn(**dense), what + " (contiguous twin)"))
        assert want is not None
        same = torch.equal(result, want) or bool(
            torch.allclose(result.double(), want.double(), rtol=1e-4, atol=1e-5, equal_nan=True)
        )
        if not same:
            raise AssertionError(f"{what}: output differs from the contiguous input's")
