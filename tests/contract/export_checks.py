"""Deployment checks of the contract suite: torch.export, ONNX (both exporters), compile.

Every registered case is exported through a thin wrapper that takes the case's tensors as a flat
tuple (non-tensor inputs are fixed at trace time) and returns every tensor of the output as a
flat tuple, so NamedTuple and dict outputs are compared field by field and the ONNX graph's
inputs are plain tensors. The batch dimension is dynamic: the tensors whose first dimension
follows the batch size are found by building the inputs at two batch sizes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from .checks import build, make_inputs
from .registry import ContractCase

__all__ = [
    "BATCHES",
    "ONNX_ATOL",
    "ONNX_RTOL",
    "TRACE_BATCH",
    "check_compile_recompiles",
    "check_export_dynamic",
    "check_onnx_dynamo",
    "check_onnx_legacy",
]

#: Batch size the programs are traced at, and the other sizes they are run at.
TRACE_BATCH = 3
BATCHES = (TRACE_BATCH, 5, 2)

#: ONNX Runtime against eager PyTorch, float32: |got - want| <= ONNX_ATOL + ONNX_RTOL * |want|.
ONNX_ATOL = 1e-5
ONNX_RTOL = 1e-5

#: torch.export against eager PyTorch (the same kernels; decompositions reorder some sums).
EXPORT_ATOL = 1e-6
EXPORT_RTOL = 1e-5


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor of a nested output (NamedTuple, dict, tuple), in a fixed order."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class Flat(nn.Module):
    """``Flat(module, kwargs)(*tensors)`` is ``module(**kwargs)`` with its tensors swapped in.

    The output is the tuple of every tensor in ``module``'s output.
    """

    def __init__(self, module: nn.Module, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        leaves, self.spec = pytree.tree_flatten(kwargs)
        self.slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        self.leaves = leaves

    def inputs(self, kwargs: dict[str, Any]) -> tuple[Tensor, ...]:
        leaves, _ = pytree.tree_flatten(kwargs)
        return tuple(leaves[i] for i in self.slots)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        leaves = list(self.leaves)
        for i, t in zip(self.slots, tensors, strict=True):
            leaves[i] = t
        kwargs = pytree.tree_unflatten(leaves, self.spec)
        return tuple(_tensors(self.module(**kwargs)))


def batched(case: ContractCase) -> tuple[list[bool], dict[int, dict[str, Any]]]:
    """Which flat input tensors carry the batch (first) dimension, and the inputs per batch."""
    inputs = {b: make_inputs(case, b) for b in sorted(set(BATCHES))}
    shapes = {b: [t.shape for t in pytree.tree_leaves(kw) if isinstance(t, Tensor)]
              for b, kw in inputs.items()}
    ref = shapes[TRACE_BATCH]
    flags = []
    for i, shape in enumerate(ref):
        flags.append(any(s[i][:1] != shape[:1] for b, s in shapes.items() if b != TRACE_BATCH))
    return flags, inputs


def _eager(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    with torch.no_grad():
        return tuple(module(*args))


def max_diff(got: tuple[Any, ...], want: tuple[Tensor, ...], what: str, *, atol: float,
             rtol: float) -> float:
    """The largest absolute difference; raises AssertionError beyond ``atol + rtol * |want|``."""
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g = torch.as_tensor(g)
        assert tuple(g.shape) == tuple(w.shape), (
            f"{what}: output {i} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        )
        if w.dtype == torch.bool or not w.is_floating_point():
            assert torch.equal(g.to(w.dtype), w), f"{what}: output {i} differs"
            continue
        diff = (g.double() - w.double()).abs()
        if diff.numel():
            worst = max(worst, float(diff.max()))
        if not bool((diff <= atol + rtol * w.double().abs()).all()):
            raise AssertionError(f"{what}: output {i} max abs difference {worst:.3g}")
    return worst


def _setup(case: ContractCase) -> tuple[Flat, list[bool], dict[int, tuple[Tensor, ...]]]:
    flags, inputs = batched(case)
    module = Flat(build(case), inputs[TRACE_BATCH]).eval()
    args = {b: module.inputs(kw) for b, kw in inputs.items()}
    return module, flags, args


Exported = tuple[Any, Flat, dict[int, tuple[Tensor, ...]]]


def exported(case: ContractCase) -> Exported:
    """The case's ``torch.export`` program with a dynamic batch, the wrapper and the inputs."""
    module, flags, args = _setup(case)
    batch = torch.export.Dim("batch", min=1, max=512)
    shapes = tuple({0: batch} if f else None for f in flags)
    with torch.no_grad():
        program = torch.export.export(module, args[TRACE_BATCH], dynamic_shapes=(shapes,))
    return program, module, args


def check_export_dynamic(case: ContractCase, done: Exported | None = None) -> float:
    """``torch.export`` with a dynamic batch, run at every batch size, equals eager.

    ``done``: the result of :func:`exported` when already at hand. Returns the largest
    difference from eager.
    """
    program, module, args = done or exported(case)
    run = program.module()
    worst = 0.0
    for b in BATCHES:
        with torch.no_grad():
            got = tuple(run(*args[b]))
        worst = max(worst, max_diff(got, _eager(module, args[b]), f"export batch {b}",
                                    atol=EXPORT_ATOL, rtol=EXPORT_RTOL))
    return worst


def _ort_run(model: bytes, args: tuple[Tensor, ...]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {n: a.detach().numpy() for n, a in zip(names, args, strict=True)}
    return session.run(None, feeds)


def check_onnx_dynamo(case: ContractCase, done: Exported | None = None) -> float:
    """The dynamo ONNX export (dynamic batch) run in ONNX Runtime at two sizes equals eager.

    The program from :func:`exported` is converted (``torch.onnx.export(program, dynamo=True)``
    is what ``torch.onnx.export(module, ..., dynamo=True)`` does after its own export).
    """
    program, module, args = done or exported(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    assert onnx_program is not None
    model = onnx_program.model_proto.SerializeToString()
    worst = 0.0
    for b in BATCHES[:2]:
        worst = max(worst, max_diff(_ort_run(model, args[b]), _eager(module, args[b]),
                                    f"onnx (dynamo) batch {b}", atol=ONNX_ATOL, rtol=ONNX_RTOL))
    return worst


def check_onnx_legacy(case: ContractCase) -> float:
    """The TorchScript-based exporter (``dynamo=False``), dynamic batch, equals eager."""
    module, flags, args = _setup(case)
    names = [f"x{i}" for i in range(len(flags))]
    with torch.no_grad():
        n_out = len(_eager(module, args[TRACE_BATCH]))
    outs = [f"y{i}" for i in range(n_out)]
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n, f in zip(names, flags) if f}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args[TRACE_BATCH], buf, dynamo=False, input_names=names,
                          output_names=outs, dynamic_axes=axes, opset_version=17)
    model = buf.getvalue()
    worst = 0.0
    for b in BATCHES[:2]:
        worst = max(worst, max_diff(_ort_run(model, args[b]), _eager(module, args[b]),
                                    f"onnx (legacy) batch {b}", atol=ONNX_ATOL, rtol=ONNX_RTOL))
    return worst


def check_compile_recompiles(case: ContractCase) -> int:
    """``torch.compile(fullgraph=True)`` over three batch sizes: at most one recompile.

    Returns the number of compilations (1 + recompiles), counted by the backend.
    """
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    module, _, args = _setup(case)
    counter = CompileCounter()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    for b in BATCHES:
        with torch.no_grad():
            got = tuple(compiled(*args[b]))
        max_diff(got, _eager(module, args[b]), f"compiled batch {b}", atol=EXPORT_ATOL,
                 rtol=EXPORT_RTOL)
    torch._dynamo.reset()
    assert counter.frame_count <= 2, (
        f"compiled {counter.frame_count} times over batch sizes {BATCHES} (at most 2 allowed)"
    )
    return counter.frame_count
