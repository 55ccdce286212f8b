"""TensorFusion: an explicit outer-product loop, the size guard, absent modalities."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.functional import tensor_fusion
from mmfuse.fusion import TensorFusion

DIMS = {"image": 3, "text": 2, "audio": 4}


def inputs(dims, batch: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g, dtype=dtype) for m, d in dims.items()}


def outer_loop(vectors: list[list[float]]) -> list[float]:
    """Every product v_0[i_0] * v_1[i_1] * ..., the first index slowest."""
    out = []
    for idx in itertools.product(*(range(len(v)) for v in vectors)):
        p = 1.0
        for v, i in zip(vectors, idx):
            p *= v[i]
        out.append(p)
    return out


def test_functional_is_explicit_outer_product() -> None:
    x = inputs(DIMS, 3)
    got = tensor_fusion([x[m] for m in DIMS])
    for b in range(3):
        want = outer_loop([[1.0, *x[m][b].tolist()] for m in DIMS])
        torch.testing.assert_close(got[b], torch.tensor(want, dtype=torch.float64))


def test_module_matches_loop_with_absent_as_one_then_zeros() -> None:
    torch.manual_seed(0)
    f = TensorFusion(DIMS, 5, dtype=torch.float64)
    x = inputs(DIMS, 4)
    present = {"text": torch.tensor([True, False, True, False]),
               "audio": torch.tensor([True, True, False, False])}
    got = f({m: x[m] for m in ("image", "text", "audio")}, present)
    present["image"] = torch.ones(4, dtype=torch.bool)
    present["image"][3] = False
    got_all_absent_row = f(x, {**present})
    for b in range(4):
        vecs = [[1.0, *(x[m][b].tolist() if bool(present[m][b]) else [0.0] * d)]
                for m, d in DIMS.items()]
        z = torch.tensor(outer_loop(vecs), dtype=torch.float64)
        want = f.linear.weight @ z + f.linear.bias
        if b < 3:
            torch.testing.assert_close(got[b], want)
        torch.testing.assert_close(got_all_absent_row[b], want)
    # a sample with nothing present gives the constant term: first weight column plus bias
    torch.testing.assert_close(got_all_absent_row[3], f.linear.weight[:, 0] + f.linear.bias)


def test_size_guard() -> None:
    with pytest.raises(
        ValueError,
        match=r"TensorFusion: expected the fused size prod\(D_m \+ 1\) to be at most "
        r"`max_fused_size`=50, got \(3\+1\) \* \(2\+1\) \* \(4\+1\) = 60;",
    ):
        TensorFusion(DIMS, 5, max_fused_size=50)
    assert TensorFusion(DIMS, 5, max_fused_size=60).fused_size == 60
    with pytest.raises(ValueError, match=r"use LowRankTensorFusion"):
        TensorFusion({"a": 2048, "b": 768}, 8)


def test_gradcheck_float64() -> None:
    torch.manual_seed(1)
    f = TensorFusion(DIMS, 2, dtype=torch.float64)
    names = list(DIMS)
    xs = tuple(v.requires_grad_() for v in inputs(DIMS, 2).values())
    assert torch.autograd.gradcheck(lambda *a: f(dict(zip(names, a))), xs)


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), batch=st.integers(1, 3))
def test_fused_size_and_unimodal_terms(sizes: list[int], batch: int) -> None:
    dims = {f"m{j}": d for j, d in enumerate(sizes)}
    x = inputs(dims, batch)
    z = tensor_fusion([x[m] for m in dims])
    total = 1
    for d in sizes:
        total *= d + 1
    assert z.shape == (batch, total)
    assert (z[:, 0] == 1).all()
    # the last modality's own features sit right after the leading 1
    torch.testing.assert_close(z[:, 1 : 1 + sizes[-1]], x[f"m{len(sizes) - 1}"])


def test_all_present_fast_path_equals_presence_path() -> None:
    """``present=None`` skips the presence masking; all-True presence must give the same."""
    torch.manual_seed(5)
    f = TensorFusion(DIMS, 4)
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()
    x = inputs(DIMS, 3, torch.float32)
    ones = {m: torch.ones(3, dtype=torch.bool) for m in DIMS}
    torch.testing.assert_close(f(x), f(x, ones))
