"""Deployment contract: every registered module exports with a dynamic batch.

For every case of the contract registry:

- ``torch.export.export`` with the batch dimension a ``torch.export.Dim``, the program run at
  batch sizes other than the traced one, equals eager;
- the dynamo ONNX export of that program, run in ONNX Runtime at two batch sizes, equals eager
  within ``ONNX_ATOL + ONNX_RTOL * |eager|`` (float32);
- ``torch.compile(fullgraph=True)`` over three batch sizes compiles at most twice (one recompile);
- the TorchScript-based ONNX exporter (``dynamo=False``) works too, except for the cases listed,
  with the reason, in docs/export.md. The tests read those lists from the page and check that
  exactly the listed cases fail, so the page cannot go stale.

``pytest tests/contract/test_export.py -s -q`` prints the measured differences and compilation
counts.
"""

from __future__ import annotations

import re
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from . import export_checks as ec
from .registry import ContractCase, all_cases

CASES = all_cases()
ids = [c.id for c in CASES]
PAGE = Path(__file__).resolve().parents[2] / "docs" / "export.md"
CHECKS = ("export", "onnx", "compile")


def documented(section: str) -> dict[str, str]:
    """The table under ``## {section}`` in docs/export.md: case id -> second column."""
    text = PAGE.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/export.md has no section {section!r}"
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", match.group(1), re.M)
    return {case_id: cell.strip() for case_id, cell in rows}


DYNAMIC_EXCEPTIONS = {k: {c.strip() for c in v.split(",")}
                      for k, v in documented("Dynamic-batch exceptions").items()}
LEGACY_EXCEPTIONS = documented("Legacy exporter exceptions")


def expected_to_fail(case: ContractCase, check: str) -> bool:
    return check in DYNAMIC_EXCEPTIONS.get(case.id, set())


def fails(fn: Any, case: ContractCase) -> BaseException | None:
    try:
        fn(case)
    except Exception as e:  # any failure: the exporters raise many types
        return e
    return None


def test_documented_cases_exist() -> None:
    known = set(ids)
    assert set(DYNAMIC_EXCEPTIONS) <= known, set(DYNAMIC_EXCEPTIONS) - known
    assert set(LEGACY_EXCEPTIONS) <= known, set(LEGACY_EXCEPTIONS) - known
    for case_id, checks in DYNAMIC_EXCEPTIONS.items():
        assert checks <= set(CHECKS), f"{case_id}: unknown checks {checks - set(CHECKS)}"


@cache
def program(case_id: str) -> tuple[Any, ec.Flat, dict[int, Any]]:
    """The exported program of a case, shared by the export and ONNX tests."""
    return ec.exported(next(c for c in CASES if c.id == case_id))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_export_dynamic_batch(case: ContractCase) -> None:
    if expected_to_fail(case, "export"):
        assert fails(lambda c: ec.check_export_dynamic(c, program(c.id)), case), (
            "listed in docs/export.md as failing export with a dynamic batch, but it passes")
        return
    print(f"export {case.id}: max |diff| {ec.check_export_dynamic(case, program(case.id)):.2g}")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_onnx_dynamo_matches_eager(case: ContractCase) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    if expected_to_fail(case, "onnx"):
        assert fails(lambda c: ec.check_onnx_dynamo(c, program(c.id)), case), (
            "listed in docs/export.md as failing the dynamo ONNX export, but it passes")
        return
    print(f"onnx {case.id}: max |diff| {ec.check_onnx_dynamo(case, program(case.id)):.2g}")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_compile_at_most_one_recompile(case: ContractCase) -> None:
    if expected_to_fail(case, "compile"):
        assert fails(ec.check_compile_recompiles, case), (
            "listed in docs/export.md as recompiling per batch size, but it does not")
        return
    print(f"compile {case.id}: {ec.check_compile_recompiles(case)} compilations")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_onnx_legacy_or_documented(case: ContractCase) -> None:
    pytest.importorskip("onnxruntime")
    error, diff = None, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            diff = ec.check_onnx_legacy(case)
        except Exception as e:  # any failure: the exporter raises many types
            error = e
    if case.id in LEGACY_EXCEPTIONS:
        assert error is not None, (
            "listed in docs/export.md as failing the legacy exporter, but it passes: "
            "remove it from the list")
        print(f"legacy {case.id}: fails as documented ({type(error).__name__})")
    else:
        assert error is None, f"legacy ONNX export fails: {type(error).__name__}: {error}"
        print(f"legacy {case.id}: max |diff| {diff:.2g}")


def test_checks_bite() -> None:
    """The checks fail on a module that bakes its batch size in or differs from eager."""
    import torch
    from torch import nn

    from .registry import ContractCase

    class Baked(nn.Module):  # a Python loop over the batch: the graph depends on its size
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x[i].flatten() * 2 for i in range(x.shape[0])])

    case = ContractCase(id="Baked", build=lambda **dd: Baked(),
                        inputs=lambda b, g: {"x": torch.randn(b, 2, 3, generator=g)},
                        out_shape=lambda b: (b, 6))
    assert fails(ec.check_export_dynamic, case) is not None
    assert fails(ec.check_compile_recompiles, case) is not None
    assert fails(ec.check_onnx_legacy, case) is not None
