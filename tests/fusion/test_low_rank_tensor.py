"""LowRankTensorFusion: equals TensorFusion with the equivalent full weight; factors registered."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion._reference import assert_all_present_fast_path_equals_presence_path, random_features
from mmfuse.errors import ModalityError
from mmfuse.fusion import LowRankTensorFusion, TensorFusion

DIMS = {"image": 3, "text": 2, "audio": 4}


def equivalent_tensor_fusion(lr: LowRankTensorFusion) -> TensorFusion:
    """W[o, i_0, ..., i_M] = sum_r w_r prod_m F_m[r, i_m, o], flattened first index slowest."""
    tf = TensorFusion(lr.dims, lr.out_dim, dtype=torch.float64)
    names = list(lr.dims)
    letters = "abcdefgh"[: len(names)]
    spec = ",".join(f"r{c}o" for c in letters) + ",r->o" + letters
    full = torch.einsum(spec, *(lr.factor(m) for m in names), lr.weights)  # (O, D_0+1, ...)
    with torch.no_grad():
        tf.linear.weight.copy_(full.reshape(lr.out_dim, -1))
        tf.linear.bias.copy_(lr.bias)
    return tf


@pytest.mark.parametrize("dims", [DIMS, {"a": 4, "b": 5}, {"only": 3}], ids=["3", "2", "1"])
def test_equals_tensor_fusion_with_equivalent_full_weight(dims) -> None:
    torch.manual_seed(0)
    lr = LowRankTensorFusion(dims, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        lr.bias.normal_()
    tf = equivalent_tensor_fusion(lr)
    x = random_features(dims, 6)
    first = next(iter(dims))
    present = {first: torch.tensor([True, False, True, False, True, True])}
    with torch.no_grad():
        torch.testing.assert_close(lr(x), tf(x))
        torch.testing.assert_close(lr(x, present), tf(x, present))


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 3), min_size=2, max_size=3), rank=st.integers(1, 3),
       seed=st.integers(0, 100))
def test_equivalence_property(sizes: list[int], rank: int, seed: int) -> None:
    torch.manual_seed(seed)
    dims = {f"m{j}": d for j, d in enumerate(sizes)}
    lr = LowRankTensorFusion(dims, 3, rank, dtype=torch.float64)
    x = random_features(dims, 2, seed=seed)
    with torch.no_grad():
        torch.testing.assert_close(lr(x), equivalent_tensor_fusion(lr)(x))


def test_every_factor_is_a_registered_parameter() -> None:
    """The MultiBench bug: factors in a Python list are not trained, saved or moved."""
    lr = LowRankTensorFusion(DIMS, 5, 3)
    names = {n for n, _ in lr.named_parameters()}
    factor_names = {f"factors.{m}.{p}" for m in DIMS for p in ("weight", "bias")}
    assert factor_names <= names
    assert {"weights", "bias"} <= names
    assert factor_names <= set(lr.state_dict())
    # moved with the module
    assert all(p.dtype == torch.float64 for p in lr.double().parameters())
    # trained: one optimiser step changes every factor
    lr = LowRankTensorFusion(DIMS, 5, 3)
    before = {m: lr.factor(m).detach().clone() for m in DIMS}
    opt = torch.optim.SGD(lr.parameters(), lr=0.1)
    lr(random_features(DIMS, 4, torch.float32)).pow(2).sum().backward()
    opt.step()
    for m in DIMS:
        assert not torch.equal(before[m], lr.factor(m).detach()), m
    # saved: a fresh module loading the state dict gives the same output
    buf = io.BytesIO()
    torch.save(lr.state_dict(), buf)
    buf.seek(0)
    other = LowRankTensorFusion(DIMS, 5, 3)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = random_features(DIMS, 2, torch.float32)
    torch.testing.assert_close(other(x), lr(x))


def test_gradcheck_float64_inputs_and_factors() -> None:
    torch.manual_seed(1)
    lr = LowRankTensorFusion({"a": 2, "b": 3}, 2, 2, dtype=torch.float64)
    xs = tuple(v.requires_grad_() for v in random_features({"a": 2, "b": 3}, 2).values())
    assert torch.autograd.gradcheck(lambda a, b: lr({"a": a, "b": b}), xs)
    from mmfuse.functional import low_rank_tensor_fusion

    fa = lr.factor("a").detach().clone().requires_grad_()
    fb = lr.factor("b").detach().clone().requires_grad_()
    w = lr.weights.detach().clone().requires_grad_()
    b = lr.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda fa, fb, w, b: low_rank_tensor_fusion([x.detach() for x in xs], [fa, fb], w, b),
        (fa, fb, w, b),
    )


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"LowRankTensorFusion: expected `rank` to be a positive"):
        LowRankTensorFusion(DIMS, 5, 0)
    assert "rank=3" in repr(LowRankTensorFusion(DIMS, 5, 3))


def test_all_present_fast_path_equals_presence_path() -> None:
    torch.manual_seed(5)
    assert_all_present_fast_path_equals_presence_path(LowRankTensorFusion(DIMS, 4, 2), DIMS)


def test_factors_are_linear_layers_holding_the_factor() -> None:
    """W_m stored as nn.Linear(D_m, R * D): weight = W_m[:, 1:, :], bias = W_m[:, 0, :]."""
    torch.manual_seed(2)
    lr = LowRankTensorFusion({"a": 3, "b": 2}, 4, 5, dtype=torch.float64)
    for m, d in lr.dims.items():
        lin = lr.factors[m]
        assert type(lin) is torch.nn.Linear and lin.weight.shape == (5 * 4, d)
        w = lr.factor(m)
        assert w.shape == (5, d + 1, 4)
        z = torch.randn(7, d, dtype=torch.float64)
        ones_z = torch.cat([torch.ones(7, 1, dtype=torch.float64), z], 1)
        loop = torch.stack([ones_z @ w[r] for r in range(5)], 1)  # (B, R, D)
        torch.testing.assert_close(lin(z).view(7, 5, 4), loop)
    with pytest.raises(ModalityError, match=r"^LowRankTensorFusion: expected a modality in "
                                            r"\['a', 'b'\], got 'c'\.$"):
        lr.factor("c")


def test_loads_checkpoints_of_the_parameter_layout() -> None:
    """A state dict with each factor as one (R, D_m + 1, D) tensor (key ``factors.<m>``, the
    layout before the factors became linear layers) loads, nested too, and computes the same."""
    torch.manual_seed(3)
    lr = LowRankTensorFusion(DIMS, 4, 2)
    old = {k: v for k, v in lr.state_dict().items() if not k.startswith("factors.")}
    old |= {f"factors.{m}": lr.factor(m).detach().clone() for m in DIMS}
    x = random_features(DIMS, 3, torch.float32)
    fresh = LowRankTensorFusion(DIMS, 4, 2)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh(x), lr(x))
    outer = torch.nn.Sequential(LowRankTensorFusion(DIMS, 4, 2))
    outer.load_state_dict({f"0.{k}": v for k, v in old.items()})
    torch.testing.assert_close(outer[0](x), lr(x))
    bad = {**old, "factors.text": torch.zeros(2, 9, 4)}  # D_text + 1 = 3, not 9
    with pytest.raises(RuntimeError, match=r"factors\.text\.weight"):
        LowRankTensorFusion(DIMS, 4, 2).load_state_dict(bad)
