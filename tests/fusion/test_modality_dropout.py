"""ModalityDropout: drop statistics, the min_present floor, eval identity, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import ModalityError, ShapeError
from mmfuse.functional import modality_dropout
from mmfuse.fusion import AttentionFusion, ModalityDropout

N = 20000


def within(rate: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(rate - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def feats(batch: int, m: int = 3) -> dict[str, torch.Tensor]:
    return {f"m{j}": torch.zeros(batch, 2) for j in range(m)}


def test_free_dropping_rate_is_p() -> None:
    g = torch.Generator().manual_seed(0)
    drop = ModalityDropout(0.3, min_present=0, generator=g).train()
    out = drop(feats(N))
    for m, kept in out.items():
        assert within(kept.float().mean().item(), 0.7, N), m
    # independent across modalities: both kept with probability 0.49
    both = (out["m0"] & out["m1"]).float().mean().item()
    assert within(both, 0.49, N)


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_at_least_one_kept_and_restored_uniformly(p: float) -> None:
    """Two modalities, min_present=1: P(kept) = (1 - p) + p^2 / 2 per modality."""
    g = torch.Generator().manual_seed(1)
    out = ModalityDropout(p, generator=g).train()(feats(N, 2))
    kept = torch.stack(list(out.values()), 1)
    assert kept.any(1).all()
    for j in range(2):
        assert within(kept[:, j].float().mean().item(), (1 - p) + p * p / 2, N)
    assert within(kept.all(1).float().mean().item(), (1 - p) ** 2, N)


def test_min_present_two_of_three() -> None:
    g = torch.Generator().manual_seed(2)
    p = 0.6
    kept = torch.stack(list(ModalityDropout(p, min_present=2, generator=g).train()(
        feats(N)).values()), 1)
    assert (kept.sum(1) >= 2).all()
    # P(all three kept) is (1 - p)^3; the rest keep exactly two
    assert within(kept.all(1).float().mean().item(), (1 - p) ** 3, N)


def test_absent_stays_absent_and_floor_counts_only_observed() -> None:
    g = torch.Generator().manual_seed(3)
    present = {"m0": torch.zeros(N, dtype=torch.bool), "m1": torch.rand(N) > 0.5}
    out = ModalityDropout(0.9, min_present=1, generator=g).train()(feats(N, 2), present)
    assert not out["m0"].any()
    torch.testing.assert_close(out["m1"], present["m1"])  # the only one observed: kept


def test_eval_and_p_zero_are_identity() -> None:
    present = {"m1": torch.tensor([True, False, True])}
    want = {"m0": torch.ones(3, dtype=torch.bool), "m1": present["m1"],
            "m2": torch.ones(3, dtype=torch.bool)}
    for drop in (ModalityDropout(0.9).eval(), ModalityDropout(0.0).train()):
        out = drop(feats(3), present)
        assert list(out) == ["m0", "m1", "m2"]
        for m in want:
            torch.testing.assert_close(out[m], want[m])


def test_generator_reproducible() -> None:
    a = ModalityDropout(0.5, generator=torch.Generator().manual_seed(7))(feats(50))
    b = ModalityDropout(0.5, generator=torch.Generator().manual_seed(7))(feats(50))
    for m in a:
        assert torch.equal(a[m], b[m])


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 8), m=st.integers(1, 4), p=st.floats(0, 1),
       min_present=st.integers(0, 4), seed=st.integers(0, 1000))
def test_functional_properties(batch: int, m: int, p: float, min_present: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    observed = torch.rand(batch, m, generator=g) > 0.3
    out = modality_dropout(observed, p, min_present=min_present, generator=g)
    assert out.dtype == torch.bool and out.shape == observed.shape
    assert not (out & ~observed).any()  # a subset of what was observed
    floor = observed.sum(1).clamp(max=min_present)
    assert (out.sum(1) >= floor).all()


def test_trains_a_fusion_module_with_gradients() -> None:
    torch.manual_seed(4)
    fuse = AttentionFusion({"a": 3, "b": 2}, 4)
    drop = ModalityDropout(0.5, generator=torch.Generator().manual_seed(0)).train()
    x = {"a": torch.randn(8, 3), "b": torch.randn(8, 2)}
    out = fuse(x, drop(x))
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fuse.parameters())


def test_compiles_in_training_without_generator() -> None:
    drop = ModalityDropout(0.7).train()
    compiled = torch.compile(drop, backend="eager", fullgraph=True)
    out = torch.stack(list(compiled(feats(64)).values()), 1)
    assert out.any(1).all() and not out.all()


def test_compiles_in_eval() -> None:
    drop = ModalityDropout(0.5).eval()
    compiled = torch.compile(drop, backend="eager", fullgraph=True)
    present = {"m0": torch.tensor([True, False])}
    out = compiled(feats(2), present)
    assert torch.equal(out["m0"], present["m0"]) and out["m1"].all()


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"ModalityDropout: expected `p` in \[0, 1\], got 1.5"):
        ModalityDropout(1.5)
    with pytest.raises(ValueError, match=r"ModalityDropout: expected `p` in \[0, 1\], got -0\.1\."):
        ModalityDropout(-0.1)
    with pytest.raises(ValueError, match=r"expected `min_present` to be a non-negative int"):
        ModalityDropout(0.5, min_present=-1)
    drop = ModalityDropout(0.5)
    with pytest.raises(TypeError, match=r"ModalityDropout: expected `features` to be a mapping"):
        drop(torch.zeros(2, 3))
    with pytest.raises(ModalityError, match=r"ModalityDropout: `features` holds no modality"):
        drop({})
    with pytest.raises(ShapeError, match=r"ModalityDropout: batch sizes disagree in `features`: "
                                         r"expected `features\['b'\]` with B=2 like "
                                         r"`features\['a'\]`, got \(3, 1\)\."):
        drop({"a": torch.zeros(2, 1), "b": torch.zeros(3, 1)})
    with pytest.raises(ModalityError, match=r"ModalityDropout: unknown modality \['c'\]"):
        drop({"a": torch.zeros(2, 1)}, {"c": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ShapeError, match=r"ModalityDropout: expected `present\['a'\]` of shape"):
        drop({"a": torch.zeros(2, 1)}, {"a": torch.ones(3, dtype=torch.bool)})


def test_features_on_different_devices() -> None:
    feats = {"a": torch.randn(4, 3), "b": torch.randn(4, 2, device="meta")}
    with pytest.raises(ValueError, match=r"^ModalityDropout: expected `features\['b'\]` on cpu "
                       r"like `features\['a'\]`, got meta\.$"):
        ModalityDropout(0.5)(feats)
