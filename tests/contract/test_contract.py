"""The shared contract suite: every registered module, every property.

Modules join by registering a ContractCase in ``tests/contract/cases/``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from . import checks
from .registry import ContractCase, all_cases

CASES = all_cases()
ids = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=ids)
@given(batch=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_output_shape_dtype_finite(case: ContractCase, batch: int, seed: int) -> None:
    checks.check_output(case, batch, seed)


@pytest.mark.parametrize("case", CASES, ids=ids)
@given(batch=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_batch_independence(case: ContractCase, batch: int, seed: int) -> None:
    if not case.batch_independent:
        pytest.skip("documented as mixing rows (batch statistics)")
    checks.check_batch_independence(case, batch, seed)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_gradients(case: ContractCase) -> None:
    checks.check_gradients(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.presence_arg], ids=lambda c: c.id)
def test_presence_invariance(case: ContractCase) -> None:
    checks.check_presence_invariance(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.masks], ids=lambda c: c.id)
def test_mask_invariance(case: ContractCase) -> None:
    checks.check_mask_invariance(case)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_compile_fullgraph_equals_eager(case: ContractCase) -> None:
    checks.check_compile(case)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_dict_round_trip(case: ContractCase) -> None:
    checks.check_state_dict(case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_dtypes(case: ContractCase, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not case.bf16:
        pytest.skip("bfloat16 documented as unsupported")
    checks.check_dtype(case, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_cuda(case: ContractCase, dtype: torch.dtype) -> None:
    checks.check_dtype(case, dtype, device="cuda")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_bad_inputs_raise_library_errors(case: ContractCase) -> None:
    checks.check_bad_inputs(case)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_empty_batch(case: ContractCase) -> None:
    checks.check_empty_batch(case)


def test_registry_is_not_empty() -> None:
    assert len(CASES) >= 1
