"""The mixed-precision policy (docs/conventions.md, "Mixed precision") over every contract case.

Under ``torch.autocast`` a module's output is a *feature* (the autocast dtype), *data* (the
inputs' dtype, computed outside autocast) or a *loss/probability* (float32); each case declares
its kind (``ContractCase.precision``, defaulting to float32 for scalar outputs). For float32
inputs and for inputs already in the autocast dtype (what an upstream module gives under
autocast), every tensor of the output must have the dtype its kind says and stay within
``TOLERANCE`` of the float32 result: ``|got - want| <= tol * (max|want| + 1) + tol * |want|``.
The backward under autocast gives every parameter a finite gradient in its own dtype, and
``torch.compile(fullgraph=True)`` under autocast equals eager under autocast.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from . import checks
from .registry import ContractCase, all_cases

CASES = all_cases()
ids = [c.id for c in CASES]

#: Relative tolerance against float32 (bfloat16 keeps 8 significant bits, float16 11).
TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.01}


def leaves(out: Any, prefix: str = "output") -> list[tuple[str, Tensor]]:
    """Every tensor in an output, named by its field path (``output.tokens.image``)."""
    if isinstance(out, Tensor):
        return [(prefix, out)]
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return [x for f in out._fields for x in leaves(getattr(out, f), f"{prefix}.{f}")]
    if isinstance(out, dict):
        return [x for k, v in out.items() for x in leaves(v, f"{prefix}.{k}")]
    if isinstance(out, (list, tuple)):
        return [x for i, v in enumerate(out) for x in leaves(v, f"{prefix}[{i}]")]
    return []


def expected_dtype(case: ContractCase, name: str, inputs: torch.dtype,
                   autocast: torch.dtype) -> torch.dtype:
    field = name.split(".")[1] if "." in name else ""
    kind = "float32" if field in case.float32_fields else case.precision_kind()
    return {"feature": autocast, "data": inputs, "float32": torch.float32}[kind]


def check_autocast(case: ContractCase, device: str, dtype: torch.dtype, batch: int = 3) -> None:
    """Dtypes per the policy and values close to float32, for float32 and ``dtype`` inputs."""
    m = checks.build(case, device=device).eval()
    tol = TOLERANCE[dtype]
    for kw in checks._variants(case, batch):
        for input_dtype in (torch.float32, dtype):
            # the float32 reference sees the same (rounded) input values
            low = checks.cast(kw, device, input_dtype)
            with torch.no_grad():
                want = leaves(m(**checks.cast(low, device, torch.float32)))
                with torch.autocast(device, dtype=dtype):
                    got = leaves(m(**low))
            assert [n for n, _ in got] == [n for n, _ in want], "autocast changed the output fields"
            for (name, g), (_, w) in zip(got, want):
                if not w.is_floating_point():
                    continue
                expect = expected_dtype(case, name, input_dtype, dtype)
                assert g.dtype == expect, (
                    f"{name}: {g.dtype} under {dtype} autocast with {input_dtype} inputs, "
                    f"expected {expect} ({case.precision_kind()})"
                )
                checks.assert_finite(g, name)
                scale = float(w.abs().max()) + 1.0 if w.numel() else 1.0
                checks.assert_close(g.float(), w.float(), f"{name} under autocast vs float32",
                                    atol=tol * scale, rtol=tol)


def check_autocast_backward(case: ContractCase, device: str, dtype: torch.dtype,
                            batch: int = 4) -> None:
    """Training under autocast: every parameter gets a finite gradient in its own dtype."""
    m = checks.build(case, device=device).train()
    kwargs = checks.cast(checks.make_inputs(case, batch), device, torch.float32)
    if case.presence_arg:
        kwargs = checks.with_presence(case, kwargs, batch)
    with torch.autocast(device, dtype=dtype):
        out = checks.run(case, m, kwargs)
    weight = checks.random_like(out, seed=7, scale=1.0).float()
    (out.float() * weight).sum().backward()
    for name, p in m.named_parameters():
        if not p.requires_grad or any(name.startswith(e) for e in case.grad_exempt):
            continue
        assert p.grad is not None, f"parameter {name!r} received no gradient under autocast"
        assert p.grad.dtype == p.dtype, f"{name!r}: gradient in {p.grad.dtype}, not {p.dtype}"
        assert bool(torch.isfinite(p.grad).all()), f"{name!r}: non-finite gradient"


def _has_parameters(case: ContractCase) -> bool:
    return any(p.requires_grad for p in checks.build(case).parameters())


PARAMETRISED = [c for c in CASES if _has_parameters(c)]


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_cpu_bfloat16_autocast_follows_the_policy(case: ContractCase) -> None:
    check_autocast(case, "cpu", torch.bfloat16)


@pytest.mark.parametrize("case", PARAMETRISED, ids=lambda c: c.id)
def test_cpu_bfloat16_autocast_backward(case: ContractCase) -> None:
    check_autocast_backward(case, "cpu", torch.bfloat16)


# the modules whose forward reads the autocast state (the policy's casts and the outside-autocast
# regions); every other module is compiled by the contract suite, where autocast changes no code
READS_AUTOCAST = ("LowRankTensorFusion", "ModalityGraphAttention", "CVAEHead", "DiffusionHead",
                  "ConditioningAugmentation")
COMPILED = [c for c in CASES
            if c.precision_kind() != "feature" or c.id.startswith(READS_AUTOCAST)]


@pytest.mark.parametrize("case", COMPILED, ids=lambda c: c.id)
def test_compiled_under_autocast_equals_eager(case: ContractCase) -> None:
    torch._dynamo.reset()
    m = checks.build(case).eval()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    kw = checks.make_inputs(case, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = leaves(compiled(**kw)), leaves(m(**kw))
    for (name, g), (_, w) in zip(got, want, strict=True):
        assert g.dtype == w.dtype, f"{name}: compiled {g.dtype}, eager {w.dtype}"
        if w.is_floating_point():
            checks.assert_close(g.float(), w.float(), f"{name}: compiled vs eager under autocast",
                                atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_cuda_float16_autocast_follows_the_policy(case: ContractCase) -> None:
    check_autocast(case, "cuda", torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", PARAMETRISED, ids=lambda c: c.id)
def test_cuda_float16_autocast_backward(case: ContractCase) -> None:
    check_autocast_backward(case, "cuda", torch.float16)


def test_the_check_bites_on_a_module_that_breaks_the_policy() -> None:
    """A loss returning bfloat16 under autocast, and a feature promoted back to float32, fail."""

    class HalfLoss(torch.nn.Module):
        def __init__(self, **dd: Any) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4, 4, **dd))

        def forward(self, a: Tensor) -> Tensor:
            return (a @ self.w).square().mean()  # bfloat16 under autocast

    class Residual(torch.nn.Module):
        def __init__(self, **dd: Any) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, **dd)

        def forward(self, a: Tensor) -> Tensor:
            return a + self.lin(a)  # promoted back to float32 by the residual

    def inputs(b: int, g: torch.Generator) -> dict[str, Tensor]:
        return {"a": torch.randn(b, 4, generator=g)}

    loss = ContractCase(id="HalfLoss", build=lambda **dd: HalfLoss(**dd), inputs=inputs,
                        out_shape=lambda b: ())
    residual = ContractCase(id="Residual", build=lambda **dd: Residual(**dd), inputs=inputs,
                            out_shape=lambda b: (b, 4))
    with pytest.raises(AssertionError, match=r"output: torch.bfloat16 .* expected torch.float32"):
        check_autocast(loss, "cpu", torch.bfloat16)
    with pytest.raises(AssertionError, match=r"output: torch.float32 .* expected torch.bfloat16"):
        check_autocast(residual, "cpu", torch.bfloat16)
