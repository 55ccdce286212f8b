"""The checks of the contract suite, one function per property.

Each raises ``AssertionError`` (with a message saying what broke) when the module violates the
contract, so the suite's own tests can show that every check bites on a broken module.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mmfuse import ModalityError, ShapeError

from .registry import BadInput, ContractCase, Path

LIBRARY_ERRORS = (ShapeError, ModalityError, TypeError, ValueError)


# ----------------------------------------------------------------------------- tree helpers


def tree_map(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def tree_tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tree_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tree_tensors(v)


def get_path(kwargs: dict[str, Any], path: Path) -> Any:
    obj: Any = kwargs
    for key in path:
        obj = obj[key]
    return obj


def set_path(kwargs: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A copy of kwargs (containers copied, tensors shared) with ``path`` set to ``value``."""
    out = tree_map(lambda t: t, kwargs)
    obj = out
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
    return out


def cast(kwargs: dict[str, Any], device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    def fn(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    return tree_map(fn, kwargs)


def slice_rows(kwargs: dict[str, Any], batch: int, rows: slice) -> dict[str, Any]:
    return tree_map(lambda t: t[rows] if t.dim() > 0 and t.shape[0] == batch else t, kwargs)


# ----------------------------------------------------------------------------- running


def build(case: ContractCase, *, seed: int = 0, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return case.build(device=device, dtype=dtype)


def make_inputs(case: ContractCase, batch: int, *, seed: int = 0, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return cast(case.inputs(batch, gen), device, dtype)


def run(case: ContractCase, module: nn.Module, kwargs: dict[str, Any]) -> Tensor:
    return case.output(module(**kwargs))


def assert_close(got: Tensor, want: Tensor, what: str, *, atol: float = 1e-5,
                 rtol: float = 1e-4) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs()
    bound = atol + rtol * want.double().abs()
    if not bool((diff <= bound).all()):
        raise AssertionError(f"{what}: max abs difference {diff.max().item():.3g}")


def assert_finite(out: Tensor, what: str) -> None:
    if not bool(torch.isfinite(out).all()):
        raise AssertionError(f"{what}: output has non-finite values")


def random_like(t: Tensor, seed: int, scale: float = 100.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(t.shape, generator=gen) * scale).to(t.device, t.dtype)


# ----------------------------------------------------------------------------- presence / masks


def presence_pattern(case: ContractCase, kwargs: dict[str, Any], batch: int) -> dict[str, Tensor]:
    """A presence mapping with row 0 all absent and every modality absent somewhere else."""
    assert case.features_arg is not None and case.presence_arg is not None
    names = list(get_path(kwargs, (case.features_arg,)))
    device = next(tree_tensors(kwargs)).device
    present = {}
    for j, m in enumerate(names):
        p = torch.ones(batch, dtype=torch.bool)
        p[0] = False
        if batch > 1 + j:
            p[1 + j] = False
        present[m] = p.to(device)
    return present


def with_presence(case: ContractCase, kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
    assert case.presence_arg is not None
    return {**kwargs, case.presence_arg: presence_pattern(case, kwargs, batch)}


def mask_pattern(like: Tensor, batch: int, seed: int) -> Tensor:
    """Random keep-mask of ``like``'s shape with row 0 fully masked and row 1 fully kept."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(like.shape, generator=gen) > 0.4
    mask[0] = False
    if batch > 1:
        mask[1] = True
    return mask.to(like.device)


def with_masks(case: ContractCase, kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
    out = kwargs
    for k, (mask_path, value_path) in enumerate(case.masks.items()):
        values = get_path(kwargs, value_path)
        like = torch.empty(values.shape[: mask_ndim(case, kwargs, mask_path, values)], device=values.device)
        out = set_path(out, mask_path, mask_pattern(like, batch, seed=100 + k))
    return out


def mask_ndim(case: ContractCase, kwargs: dict[str, Any], mask_path: Path, values: Tensor) -> int:
    """Masks cover the leading dims of the values: all but the feature dim unless a mask of
    another rank is already given in the example inputs."""
    try:
        given = get_path(kwargs, mask_path)
    except (KeyError, TypeError):
        given = None
    return given.dim() if isinstance(given, Tensor) else values.dim() - 1


# ----------------------------------------------------------------------------- the checks


def check_output(case: ContractCase, batch: int = 4, seed: int = 0) -> None:
    """Output shape, dtype and finiteness in eval mode."""
    m = build(case).eval()
    with torch.no_grad():
        out = run(case, m, make_inputs(case, batch, seed=seed))
    want = tuple(case.out_shape(batch))
    assert tuple(out.shape) == want, f"output shape {tuple(out.shape)}, expected {want}"
    assert out.dtype == torch.float32, f"output dtype {out.dtype}, expected torch.float32"
    assert_finite(out, "output")


def check_gradients(case: ContractCase, batch: int = 4) -> None:
    """Every parameter receives a finite gradient (presence/masks exercised where taken).

    A module without parameters must instead pass finite gradients to its floating inputs.
    """
    m = build(case).train()
    kwargs = make_inputs(case, batch)
    if case.presence_arg:
        kwargs = with_presence(case, kwargs, batch)
    if not any(p.requires_grad for p in m.parameters()):
        leaves = [t.requires_grad_() for t in tree_tensors(kwargs) if t.is_floating_point()]
        outs = run(case, m, kwargs)
        assert outs.requires_grad, "output does not depend differentiably on any input"
        grads = torch.autograd.grad((outs * random_like(outs, seed=7, scale=1.0)).sum(), leaves,
                                    allow_unused=True)
        assert any(g is not None for g in grads), "no input receives a gradient"
        for g in grads:
            assert g is None or bool(torch.isfinite(g).all()), "an input has a non-finite gradient"
        return
    outs = run(case, m, kwargs)
    weight = random_like(outs, seed=7, scale=1.0)
    (outs * weight).sum().backward()
    for name, p in m.named_parameters():
        if not p.requires_grad or any(name.startswith(e) for e in case.grad_exempt):
            continue
        assert p.grad is not None, f"parameter {name!r} received no gradient"
        assert bool(torch.isfinite(p.grad).all()), f"parameter {name!r} has a non-finite gradient"
    if case.presence_arg:  # also without presence: every parameter of the observed path
        m.zero_grad(set_to_none=True)
        outs = run(case, m, make_inputs(case, batch))
        if not outs.requires_grad:  # e.g. a plain concatenation when everything is present
            return
        (outs * weight).sum().backward()
        for name, p in m.named_parameters():
            if p.grad is not None:
                assert bool(torch.isfinite(p.grad).all()), f"{name!r}: non-finite gradient"


def check_batch_independence(case: ContractCase, batch: int = 5, seed: int = 0) -> None:
    """In eval mode, each row computed alone equals that row computed in the batch."""
    if not case.batch_independent:
        return
    m = build(case).eval()
    kwargs = make_inputs(case, batch, seed=seed)
    variants = [kwargs]
    if case.presence_arg:
        variants.append(with_presence(case, kwargs, batch))
    if case.masks:
        variants.append(with_masks(case, kwargs, batch))
    with torch.no_grad():
        for kw in variants:
            full = run(case, m, kw)
            for i in range(batch):
                alone = run(case, m, slice_rows(kw, batch, slice(i, i + 1)))
                assert_close(alone, full[i : i + 1], f"row {i} alone vs in the batch")


def check_presence_invariance(case: ContractCase, batch: int = 5) -> None:
    """Absent modalities' values change nothing; a modality left out of the mapping equals it
    marked absent for every row; rows with nothing present are finite."""
    if not case.presence_arg:
        return
    assert case.features_arg is not None
    m = build(case).eval()
    kwargs = with_presence(case, make_inputs(case, batch), batch)
    present = kwargs[case.presence_arg]
    changed = kwargs
    for k, (name, p) in enumerate(present.items()):
        values = get_path(kwargs, (case.features_arg, name))
        keep = p.reshape(p.shape + (1,) * (values.dim() - 1))
        changed = set_path(changed, (case.features_arg, name),
                           values.where(keep, random_like(values, seed=11 + k)))
    with torch.no_grad():
        out = run(case, m, kwargs)
        assert_finite(out, "with absent modalities (row 0: nothing present)")
        assert_close(run(case, m, changed), out, "changing absent modalities' values")
        for name in present:
            dropped = {k: v for k, v in kwargs[case.features_arg].items() if k != name}
            if not dropped:
                continue
            pres = {k: v for k, v in present.items() if k != name}
            all_absent = {**present, name: torch.zeros_like(present[name])}
            a = run(case, m, {**kwargs, case.features_arg: dropped, case.presence_arg: pres})
            b = run(case, m, {**kwargs, case.presence_arg: all_absent})
            assert_close(a, b, f"leaving {name!r} out vs marking it absent")


def check_mask_invariance(case: ContractCase, batch: int = 4) -> None:
    """Masked tokens' values change nothing; fully masked rows are finite."""
    if not case.masks:
        return
    m = build(case).eval()
    kwargs = with_masks(case, make_inputs(case, batch), batch)
    changed = kwargs
    for k, (mask_path, value_path) in enumerate(case.masks.items()):
        mask = get_path(kwargs, mask_path)
        values = get_path(kwargs, value_path)
        keep = mask.reshape(mask.shape + (1,) * (values.dim() - mask.dim()))
        changed = set_path(changed, value_path, values.where(keep, random_like(values, 21 + k)))
    with torch.no_grad():
        out = run(case, m, kwargs)
        assert_finite(out, "with token masks (row 0 fully masked)")
        other = run(case, m, changed)
    if case.valid_output is not None:
        valid = case.valid_output(kwargs).expand_as(out)
        out, other = out[valid], other[valid]
    assert_close(other, out, "changing masked tokens' values")


def _variants(case: ContractCase, batch: int) -> list[dict[str, Any]]:
    kwargs = make_inputs(case, batch)
    out = [kwargs]
    if case.presence_arg:
        out.append(with_presence(case, kwargs, batch))
    if case.masks:
        out.append(with_masks(case, kwargs, batch))
    return out


def check_compile(case: ContractCase, batch: int = 3) -> None:
    """``torch.compile(backend="eager", fullgraph=True)`` gives the eager result."""
    torch._dynamo.reset()
    m = build(case).eval()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        for kw in _variants(case, batch):
            assert_close(run(case, compiled, kw), run(case, m, kw), "compiled vs eager")


def check_state_dict(case: ContractCase, batch: int = 3) -> None:
    """A state_dict saved, serialised and loaded into a fresh instance reproduces the output."""
    a = build(case, seed=0).eval()
    b = build(case, seed=1).eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    with torch.no_grad():
        for kw in _variants(case, batch):
            assert_close(run(case, b, kw), run(case, a, kw), "after state_dict round trip")


TOLERANCE = {torch.float64: 1e-4, torch.bfloat16: 0.1}


def check_dtype(case: ContractCase, dtype: torch.dtype, device: str = "cpu",
                batch: int = 3) -> None:
    """Parameters, inputs and output all in ``dtype`` (on ``device``), close to float32 on CPU."""
    if dtype == torch.bfloat16 and not case.bf16:
        return
    ref = build(case).eval()
    m = build(case, device=device, dtype=dtype).eval()
    m.load_state_dict(ref.state_dict())
    for name, p in m.named_parameters():
        assert p.dtype == dtype, f"parameter {name!r} is {p.dtype}, expected {dtype}"
        assert p.device.type == device, f"parameter {name!r} on {p.device}, expected {device}"
    with torch.no_grad():
        for kw in _variants(case, batch):
            want = run(case, ref, kw)
            got = run(case, m, cast(kw, device, dtype))
            assert got.dtype == dtype, f"output dtype {got.dtype} with {dtype} inputs"
            assert got.device.type == device, f"output on {got.device}, expected {device}"
            assert_finite(got, f"{dtype} output")
            tol = TOLERANCE.get(dtype, 1e-4)
            scale = float(want.abs().max()) + 1.0
            assert_close(got.float().cpu(), want, f"{dtype} on {device} vs float32 on cpu",
                         atol=tol * scale, rtol=tol)


# ----------------------------------------------------------------------------- bad inputs


def generated_bad_inputs(case: ContractCase, kwargs: dict[str, Any], batch: int) -> list[BadInput]:
    """Bad inputs derived from the case's flags: rank, sizes, batch, names, dtypes, masks."""
    bad: list[BadInput] = []
    fa = case.features_arg
    if fa is not None:
        feats = kwargs[fa]
        names = list(feats)
        first = names[0]
        x = feats[first]
        bad += [
            BadInput("features not a mapping", {**kwargs, fa: x}, TypeError, fa),
            BadInput("wrong rank", set_path(kwargs, (fa, first), x[..., None]), ShapeError, first),
            BadInput("wrong rank (no batch)", set_path(kwargs, (fa, first), x[0]), ShapeError, first),
            BadInput("wrong last dimension",
                     set_path(kwargs, (fa, first), torch.cat([x, x[..., :1]], -1)), ShapeError,
                     first),
            BadInput("integer dtype", set_path(kwargs, (fa, first), x.long()), TypeError, first),
            BadInput("unknown modality", set_path(kwargs, (fa, "__unknown__"), x), ModalityError,
                     "__unknown__"),
        ]
        if len(names) > 1:
            y = feats[names[1]]
            bad.append(BadInput("batch mismatch between modalities",
                                set_path(kwargs, (fa, names[1]), torch.cat([y, y[:1]])),
                                ShapeError, names[1]))
        if case.presence_arg is not None:
            pa = case.presence_arg
            ones = torch.ones(batch, dtype=torch.bool)
            bad += [
                BadInput("presence not bool", {**kwargs, pa: {first: ones.float()}}, TypeError, pa),
                BadInput("presence wrong shape", {**kwargs, pa: {first: ones[:, None]}},
                         ShapeError, pa),
                BadInput("presence batch mismatch",
                         {**kwargs, pa: {first: torch.ones(batch + 1, dtype=torch.bool)}},
                         ShapeError, pa),
                BadInput("presence unknown modality", {**kwargs, pa: {"__unknown__": ones}},
                         ModalityError, "__unknown__"),
            ]
        else:
            bad.append(BadInput("missing modality", {**kwargs, fa: {n: feats[n] for n in names[1:]}}
                                if len(names) > 1 else {**kwargs, fa: {}}, ModalityError, fa))
    for arg in case.tensor_args:
        x = kwargs[arg]
        bad += [
            BadInput(f"`{arg}` wrong last dimension",
                     {**kwargs, arg: torch.cat([x, x[..., :1]], -1)}, ShapeError, arg),
            BadInput(f"`{arg}` wrong rank", {**kwargs, arg: x[..., None]}, ShapeError, arg),
            BadInput(f"`{arg}` integer dtype", {**kwargs, arg: x.long()}, TypeError, arg),
        ]
    if len(case.tensor_args) > 1:
        a = case.tensor_args[1]
        x = kwargs[a]
        bad.append(BadInput(f"batch mismatch in `{a}`", {**kwargs, a: torch.cat([x, x[:1]])},
                            ShapeError, a))
    masked = with_masks(case, kwargs, batch)
    for mask_path in case.masks:
        mask = get_path(masked, mask_path)
        arg = mask_path[-1]
        bad += [
            BadInput(f"mask {arg!r} not bool", set_path(masked, mask_path, mask.float()),
                     TypeError, arg),
            BadInput(f"mask {arg!r} wrong length",
                     set_path(masked, mask_path, torch.cat([mask, mask[..., :1]], -1)),
                     ShapeError, arg),
        ]
    return bad


def check_bad_inputs(case: ContractCase, batch: int = 3) -> None:
    """Every bad input raises the library's error, one line, naming module and argument."""
    m = build(case).eval()
    kwargs = make_inputs(case, batch)
    bad = generated_bad_inputs(case, kwargs, batch)
    if case.bad_inputs is not None:
        bad += case.bad_inputs(kwargs)
    owner = type(m).__name__
    for b in bad:
        try:
            with torch.no_grad():
                m(**b.kwargs)
        except b.error as e:
            msg = str(e)
            assert "\n" not in msg, f"{b.what}: message is not one line: {msg!r}"
            assert owner in msg, f"{b.what}: message does not name {owner}: {msg!r}"
            assert b.arg in msg, f"{b.what}: message does not name {b.arg!r}: {msg!r}"
            assert "expected" in msg and "got" in msg, f"{b.what}: message lacks expected/got: {msg!r}"
        except Exception as e:
            raise AssertionError(
                f"{b.what}: expected {b.error.__name__} from the validators, got "
                f"{type(e).__name__}: {e}"
            ) from e
        else:
            raise AssertionError(f"{b.what}: accepted without error")


def check_empty_batch(case: ContractCase) -> None:
    """B=0 either raises a clear library error or returns a correct empty output."""
    m = build(case).eval()
    try:
        kwargs = make_inputs(case, 0)
    except RuntimeError:  # the case cannot even build B=0 inputs: treated as an error case
        return
    try:
        with torch.no_grad():
            out = run(case, m, kwargs)
    except LIBRARY_ERRORS as e:
        assert case.empty_batch == "error", f"B=0 raised {type(e).__name__}: {e}"
        assert type(m).__name__ in str(e), f"B=0 error does not name the module: {e}"
        return
    except Exception as e:
        raise AssertionError(f"B=0 raised {type(e).__name__} from inside: {e}") from e
    assert case.empty_batch == "empty", "B=0 returned an output but the case documents an error"
    want = tuple(case.out_shape(0))
    assert tuple(out.shape) == want, f"B=0 output shape {tuple(out.shape)}, expected {want}"


ALL_CHECKS: dict[str, Callable[[ContractCase], None]] = {
    "output": check_output,
    "gradients": check_gradients,
    "batch_independence": check_batch_independence,
    "presence_invariance": check_presence_invariance,
    "mask_invariance": check_mask_invariance,
    "compile": check_compile,
    "state_dict": check_state_dict,
    "float64": lambda c: check_dtype(c, torch.float64),
    "bfloat16": lambda c: check_dtype(c, torch.bfloat16),
    "bad_inputs": check_bad_inputs,
    "empty_batch": check_empty_batch,
}
