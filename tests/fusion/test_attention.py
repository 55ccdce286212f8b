"""AttentionFusion: hand-loop reference, weights over present modalities, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion._reference import assert_all_present_fast_path_equals_presence_path, random_features
from mmfuse import ShapeError
from mmfuse.functional import masked_softmax
from mmfuse.fusion import AttentionFusion, AttentionFusionOutput

DIMS = {"image": 5, "text": 3, "audio": 4}


def reference(f: AttentionFusion, feats, present) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, per modality: project, score, exp, normalise over the present ones."""
    batch = next(iter(feats.values())).shape[0]
    fused = torch.zeros(batch, f.out_dim, dtype=torch.float64)
    weights = torch.zeros(batch, len(DIMS), dtype=torch.float64)
    for i in range(batch):
        here = [j for j, m in enumerate(DIMS) if bool(present[m][i])]
        if not here:
            fused[i] = f.missing.double()
            continue
        projs, scores = {}, {}
        for j in here:
            m = list(DIMS)[j]
            lin = f.proj[m]
            projs[j] = lin.weight.double() @ feats[m][i] + lin.bias.double()
            scores[j] = float(f.score.weight.double()[0] @ projs[j])
        top = max(scores.values())
        total = sum(math.exp(s - top) for s in scores.values())
        for j in here:
            weights[i, j] = math.exp(scores[j] - top) / total
            fused[i] += weights[i, j] * projs[j]
    return fused, weights


def test_matches_hand_loop_with_absent_modalities() -> None:
    torch.manual_seed(0)
    f = AttentionFusion(DIMS, 6, dtype=torch.float64)
    feats = random_features(DIMS, 6)
    present = {
        "image": torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool),
        "text": torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool),
        "audio": torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool),
    }
    with torch.no_grad():
        f.missing.normal_()
        out = f(feats, present, return_weights=True)
        want_fused, want_w = reference(f, feats, present)
    assert isinstance(out, AttentionFusionOutput)
    torch.testing.assert_close(out.fused, want_fused)
    torch.testing.assert_close(out.weights, want_w)
    # the last row has nothing present: the missing embedding, weights all zero
    torch.testing.assert_close(out.fused[5], f.missing.detach())
    assert out.weights[5].abs().sum() == 0


def test_weights_are_per_sample_not_constant() -> None:
    """The source sketch's softmax over one logit was always 1; here weights vary by sample."""
    torch.manual_seed(1)
    f = AttentionFusion(DIMS, 6)
    w = f(random_features(DIMS, 16, torch.float32), return_weights=True).weights
    assert w.std(dim=0).min() > 1e-3
    assert (w > 0).all() and (w < 1).all()


def test_hidden_scoring_network() -> None:
    torch.manual_seed(2)
    f = AttentionFusion(DIMS, 6, hidden=7)
    feats = random_features(DIMS, 4, torch.float32)
    out = f(feats, return_weights=True)
    values = torch.stack([f.proj[m](feats[m]) for m in DIMS], 1)
    s = f.score(values).squeeze(-1)
    torch.testing.assert_close(out.weights, s.softmax(-1))
    torch.testing.assert_close(out.fused, (out.weights[..., None] * values).sum(1))


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 6),
    pattern=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=6, max_size=6),
    seed=st.integers(0, 1000),
)
def test_weights_sum_to_one_over_present(batch: int, pattern, seed: int) -> None:
    torch.manual_seed(seed)
    f = AttentionFusion(DIMS, 4)
    obs = torch.tensor(pattern[:batch], dtype=torch.bool)  # (B, M)
    present = {m: obs[:, j] for j, m in enumerate(DIMS)}
    out = f(random_features(DIMS, batch, torch.float32, seed), present, return_weights=True)
    w = out.weights
    assert torch.isfinite(out.fused).all()
    assert (w[~obs] == 0).all()
    sums = w.sum(-1)
    any_present = obs.any(-1)
    torch.testing.assert_close(sums[any_present], torch.ones_like(sums[any_present]))
    assert (sums[~any_present] == 0).all()


def test_declared_order_not_callers_order() -> None:
    torch.manual_seed(3)
    f = AttentionFusion(DIMS, 4)
    feats = random_features(DIMS, 3, torch.float32)
    reordered = {m: feats[m] for m in reversed(list(DIMS))}
    a = f(feats, return_weights=True)
    b = f(reordered, return_weights=True)
    torch.testing.assert_close(a.fused, b.fused)
    torch.testing.assert_close(a.weights, b.weights)


def test_gradcheck_float64() -> None:
    torch.manual_seed(4)
    f = AttentionFusion(DIMS, 3, dtype=torch.float64)
    feats = {m: x.requires_grad_() for m, x in random_features(DIMS, 2).items()}
    present = {"text": torch.tensor([True, False])}
    names = list(DIMS)

    def fn(*xs):
        return f(dict(zip(names, xs)), present)

    assert torch.autograd.gradcheck(fn, tuple(feats[m] for m in names))


def test_masked_softmax_empty_row_is_zero_and_no_nan() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    obs = torch.tensor([[False, False], [True, False]])
    w = masked_softmax(s, obs)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))


def test_errors() -> None:
    f = AttentionFusion(DIMS, 4)
    feats = random_features(DIMS, 2, torch.float32)
    with pytest.raises(
        ShapeError,
        match=r"AttentionFusion: expected `features\['text'\]` of shape \(B, D\) with D=3, B=2, "
        r"got \(2, 5\)\.",
    ):
        f({**feats, "text": torch.randn(2, 5)})
    with pytest.raises(ValueError, match=r"AttentionFusion: expected `out_dim` to be a positive"):
        AttentionFusion(DIMS, 0)
    with pytest.raises(ValueError, match=r"AttentionFusion: expected `hidden` to be a positive"):
        AttentionFusion(DIMS, 4, hidden=0)
    assert "hidden=None" in repr(f)


def test_all_present_fast_path_equals_presence_path() -> None:
    torch.manual_seed(5)
    assert_all_present_fast_path_equals_presence_path(AttentionFusion(DIMS, 4), DIMS)


def test_default_out_dim_is_the_smallest_input_size() -> None:
    """TorchMultimodal's AttentionFusionModule test builds it without a projection size and
    expects the smallest encoder size."""
    f = AttentionFusion({"channel_1": 3, "channel_2": 3, "channel_3": 4})
    assert f.out_dim == 3
    x = {"channel_1": torch.rand(2, 3), "channel_2": torch.rand(2, 3), "channel_3": torch.rand(2, 4)}
    assert f(x).shape == (2, 3)
