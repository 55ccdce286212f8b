"""DeepSetsFusion and set_pool: a per-sample loop reference, permutation invariance, absent
modalities equal to the model on the present subset."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion._reference import random_features, randomise
from mmfuse import ShapeError
from mmfuse.functional import set_pool
from mmfuse.fusion import DeepSetsFusion

DIMS = {"image": 5, "text": 3, "audio": 4}


def reference(f: DeepSetsFusion, feats, present) -> torch.Tensor:
    """rho(pool over the present modalities of phi_m(x_m)), one sample at a time."""
    rows = []
    for i in range(next(iter(feats.values())).shape[0]):
        here = [m for m in f.dims if m in feats and bool(present[m][i])]
        enc = [f.encode(m, feats[m][i : i + 1])[0] for m in here]
        if not enc:
            pooled = torch.zeros(f.hidden, dtype=torch.float64)
        elif f.reduce == "sum":
            pooled = sum(enc)
        elif f.reduce == "mean":
            pooled = sum(enc) / len(enc)
        else:
            pooled = torch.stack(enc).max(dim=0).values
        rows.append(f.rho(pooled))
    return torch.stack(rows)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_matches_per_sample_reference(reduce: str) -> None:
    torch.manual_seed(0)
    f = DeepSetsFusion(DIMS, 6, hidden=7, reduce=reduce, dtype=torch.float64)
    x = random_features(DIMS, 8)
    g = torch.Generator().manual_seed(1)
    present = {m: torch.rand(8, generator=g) > 0.4 for m in DIMS}
    present["image"][0] = present["text"][0] = present["audio"][0] = False
    torch.testing.assert_close(f(x, present), reference(f, x, present))
    all_present = {m: torch.ones(8, dtype=torch.bool) for m in DIMS}
    torch.testing.assert_close(f(x), reference(f, x, all_present))


def test_empty_row_is_rho_of_zero() -> None:
    torch.manual_seed(0)
    f = DeepSetsFusion(DIMS, 6, dtype=torch.float64)
    x = random_features(DIMS, 2)
    none = {m: torch.tensor([False, True]) for m in DIMS}
    out = f(x, none)
    torch.testing.assert_close(out[0], f.rho(torch.zeros(f.hidden, dtype=torch.float64)))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_shared_phi_is_invariant_to_permuting_the_modalities(reduce: str) -> None:
    """With one phi, swapping the values among modalities leaves the output unchanged."""
    torch.manual_seed(0)
    dims = {"a": 4, "b": 4, "c": 4}
    f = DeepSetsFusion(dims, 5, reduce=reduce, shared=True, dtype=torch.float64)
    x = random_features(dims, 6)
    present = {"a": torch.tensor([True, False, True, True, False, True]),
               "c": torch.tensor([True, True, False, True, False, False])}
    out = f(x, present)
    for perm in (("b", "c", "a"), ("c", "a", "b"), ("b", "a", "c")):
        moved = {new: x[old] for new, old in zip(dims, perm)}
        full = {m: torch.ones(6, dtype=torch.bool) for m in dims}
        moved_present = {new: {**full, **present}[old] for new, old in zip(dims, perm)}
        torch.testing.assert_close(f(moved, moved_present), out)
    # a non-symmetric fusion (concatenation) would change: the check can fail
    assert not torch.allclose(torch.cat([x["a"], x["b"]], 1), torch.cat([x["b"], x["a"]], 1))


def test_per_modality_phi_independent_of_declared_and_given_order() -> None:
    torch.manual_seed(0)
    f = DeepSetsFusion(DIMS, 6, dtype=torch.float64)
    randomise(f)
    reordered = DeepSetsFusion({m: DIMS[m] for m in ("audio", "image", "text")}, 6,
                               dtype=torch.float64)
    reordered.load_state_dict(f.state_dict())
    x = random_features(DIMS, 5)
    given_reversed = dict(reversed(list(x.items())))
    torch.testing.assert_close(reordered(given_reversed), f(x))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_absent_equals_the_model_on_the_present_subset(reduce: str) -> None:
    torch.manual_seed(0)
    f = DeepSetsFusion(DIMS, 6, reduce=reduce, dtype=torch.float64)
    randomise(f)
    x = random_features(DIMS, 4)
    present = {"image": torch.tensor([True, False, True, False]),
               "text": torch.tensor([True, True, False, False]),
               "audio": torch.tensor([False, True, True, False])}
    out = f(x, present)
    for i in range(3):  # row 3 has nothing present
        subset = {m: x[m][i : i + 1] for m in DIMS if bool(present[m][i])}
        torch.testing.assert_close(out[i : i + 1], f(subset))


def test_absent_values_never_reach_output_or_gradient() -> None:
    torch.manual_seed(0)
    f = DeepSetsFusion(DIMS, 6, reduce="max")
    x = random_features(DIMS, 3, dtype=torch.float32)
    present = {"text": torch.tensor([True, False, False])}
    x["text"][1:] = float("nan")
    out = f(x, present)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_default_out_dim_and_config_errors() -> None:
    assert DeepSetsFusion({"a": 3, "b": 3, "c": 4}).out_dim == 3
    assert DeepSetsFusion({"a": 3, "b": 9}, hidden=11).hidden == 11
    with pytest.raises(ValueError, match=r"DeepSetsFusion: `shared=True` needs every modality "
                                         r"of one size, expected equal `dims`, got"):
        DeepSetsFusion({"a": 3, "b": 4}, 5, shared=True)
    with pytest.raises(ValueError, match=r"DeepSetsFusion: unknown `reduce` 'median'; "
                                         r"expected one of \['sum', 'mean', 'max'\]"):
        DeepSetsFusion(DIMS, 5, reduce="median")


def test_set_pool_gradcheck_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[True, False, True, True], [False] * 4, [True, True, False, False]])
    for reduce in ("sum", "mean", "max"):
        assert torch.autograd.gradcheck(lambda t, r=reduce: set_pool(t, obs, r), (v,))
    torch.testing.assert_close(set_pool(v, None, "mean"), v.mean(1))
    with pytest.raises(ShapeError, match=r"set_pool: expected `observed` of shape \(B, M\) "
                                             r"with B=3, M=4, got \(3, 5\)"):
        set_pool(v, torch.ones(3, 5, dtype=torch.bool))


def test_exports_with_a_dynamic_batch() -> None:
    f = DeepSetsFusion(DIMS, 6, reduce="mean").eval()
    x = random_features(DIMS, 4, dtype=torch.float32)
    present = {m: torch.tensor([True, False, True, True]) for m in DIMS}
    batch = torch.export.Dim("B", min=2, max=64)
    ep = torch.export.export(f, (), {"features": x, "present": present}, dynamic_shapes={
        "features": {m: {0: batch} for m in DIMS}, "present": {m: {0: batch} for m in DIMS}})
    x7 = random_features(DIMS, 7, dtype=torch.float32, seed=3)
    p7 = {m: torch.rand(7, generator=torch.Generator().manual_seed(4)) > 0.5 for m in DIMS}
    torch.testing.assert_close(ep.module()(features=x7, present=p7), f(x7, p7))


@settings(deadline=None, max_examples=25)
@given(batch=st.integers(1, 4), m=st.integers(1, 5), d=st.integers(1, 4),
       reduce=st.sampled_from(["sum", "mean", "max"]), seed=st.integers(0, 10_000))
def test_set_pool_is_symmetric_and_reads_only_observed(batch: int, m: int, d: int, reduce: str,
                                                       seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, m, d, generator=g, dtype=torch.float64)
    obs = torch.rand(batch, m, generator=g) > 0.3
    out = set_pool(v, obs, reduce)
    perm = torch.randperm(m, generator=g)
    torch.testing.assert_close(set_pool(v[:, perm], obs[:, perm], reduce), out)
    garbage = v.where(obs[..., None], torch.tensor(float("nan"), dtype=torch.float64))
    torch.testing.assert_close(set_pool(garbage, obs, reduce), out)
    for i in range(batch):
        rows = v[i, obs[i]]
        want = (torch.zeros(d, dtype=torch.float64) if rows.shape[0] == 0 else
                {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values}[reduce])
        torch.testing.assert_close(out[i], want)
