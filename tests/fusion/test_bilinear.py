"""BilinearFusion: hand reference, signed square root with a finite gradient at 0, absence."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.functional import bilinear_pool, signed_sqrt
from mmfuse.fusion import BilinearFusion

DIMS = {"image": 5, "text": 3, "audio": 4}


def inputs(batch: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g, dtype=dtype) for m, d in DIMS.items()}


def test_signed_sqrt_values_and_finite_gradient_at_zero() -> None:
    eps = 1e-6
    x = torch.tensor([-4.0, -1e-3, 0.0, 1e-3, 9.0], dtype=torch.float64, requires_grad=True)
    y = signed_sqrt(x, eps)
    want = torch.sign(x) * (torch.sqrt(x.abs() + eps) - math.sqrt(eps))
    torch.testing.assert_close(y, want)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all()
    assert grad[2].item() == pytest.approx(1 / (2 * math.sqrt(eps)))
    # the plain signed square root has a NaN gradient there (0 * inf)
    z = torch.zeros(1, requires_grad=True)
    (plain,) = torch.autograd.grad((torch.sign(z) * z.abs().sqrt()).sum(), z)
    assert not torch.isfinite(plain).all()
    assert torch.autograd.gradcheck(lambda t: signed_sqrt(t, 1e-2), (x,))


def reference(f: BilinearFusion, feats, present) -> torch.Tensor:
    names = list(DIMS)
    batch = feats[names[0]].shape[0]
    out = torch.zeros(batch, f.out_dim, dtype=torch.float64)
    for i in range(batch):
        here = [m for m in names if bool(present[m][i])]
        if not here:
            continue
        joint = torch.ones(f.out_dim * f.rank, dtype=torch.float64)
        for m in here:
            joint = joint * (f.proj[m].weight @ feats[m][i] + f.proj[m].bias)
        pooled = torch.stack([joint[o * f.rank : (o + 1) * f.rank].sum() for o in range(f.out_dim)])
        s = torch.sign(pooled) * (torch.sqrt(pooled.abs() + f.eps) - math.sqrt(f.eps))
        out[i] = s / s.norm()
    return out


def test_matches_hand_reference_with_absent_modalities() -> None:
    torch.manual_seed(0)
    f = BilinearFusion(DIMS, 4, 3, dtype=torch.float64)
    x = inputs(5)
    present = {
        "image": torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool),
        "text": torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool),
        "audio": torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool),
    }
    with torch.no_grad():
        got = f(x, present)
        torch.testing.assert_close(got, reference(f, x, present))
    torch.testing.assert_close(got[:4].norm(dim=-1), torch.ones(4, dtype=torch.float64))
    assert (got[4] == 0).all()


def test_gradient_finite_when_pooled_is_exactly_zero() -> None:
    f = BilinearFusion({"a": 2, "b": 2}, 3, 2)
    with torch.no_grad():
        f.proj["a"].weight.zero_()
        f.proj["a"].bias.zero_()
    x = {"a": torch.randn(2, 2, requires_grad=True), "b": torch.randn(2, 2, requires_grad=True)}
    out = f(x)
    assert (out == 0).all()
    out.sum().backward()
    for p in [*f.parameters(), *x.values()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_gradcheck_float64() -> None:
    torch.manual_seed(1)
    f = BilinearFusion(DIMS, 3, 2, eps=1e-2, dtype=torch.float64)
    names = list(DIMS)
    xs = tuple(v.requires_grad_() for v in inputs(2).values())
    present = {"image": torch.tensor([True, False])}
    assert torch.autograd.gradcheck(lambda *a: f(dict(zip(names, a)), present), xs)


@settings(max_examples=10, deadline=None)
@given(rank=st.integers(1, 4), out_dim=st.integers(1, 5), seed=st.integers(0, 100))
def test_rank_one_is_hadamard_product(rank: int, out_dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, out_dim * rank, generator=g, dtype=torch.float64)
    b = torch.randn(3, out_dim * rank, generator=g, dtype=torch.float64)
    obs = torch.ones(3, 2, dtype=torch.bool)
    got = bilinear_pool([a, b], obs, rank)
    pooled = (a * b).reshape(3, out_dim, rank).sum(-1)
    s = signed_sqrt(pooled)
    torch.testing.assert_close(got, s / s.norm(dim=-1, keepdim=True))


def test_dropout_only_in_training() -> None:
    torch.manual_seed(2)
    f = BilinearFusion(DIMS, 4, 3, dropout=0.5)
    x = inputs(3, torch.float32)
    f.eval()
    torch.testing.assert_close(f(x), f(x))
    f.train()
    assert not torch.equal(f(x), f(x))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"BilinearFusion: expected `dropout` in \[0, 1\), got 1"):
        BilinearFusion(DIMS, 4, 2, dropout=1)
    with pytest.raises(ValueError, match=r"BilinearFusion: expected `eps` to be a positive"):
        BilinearFusion(DIMS, 4, 2, eps=0.0)


def test_all_present_fast_path_equals_presence_path() -> None:
    """``present=None`` skips the presence masking; all-True presence must give the same."""
    torch.manual_seed(5)
    f = BilinearFusion(DIMS, 4, 2)
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()
    x = inputs(3, torch.float32)
    ones = {m: torch.ones(3, dtype=torch.bool) for m in DIMS}
    torch.testing.assert_close(f(x), f(x, ones))
