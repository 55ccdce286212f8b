"""GatedFusion: the two-modality GMU formula, an N-modality loop reference, missing inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.fusion import GatedFusion

DIMS = {"image": 5, "text": 3, "audio": 4}


def inputs(dims, batch: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g, dtype=dtype) for m, d in dims.items()}


def randomise(f: GatedFusion) -> None:
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()


def test_two_modalities_is_arevalo_gmu() -> None:
    """z = sigmoid(g_v - g_t) per feature, h = z * tanh(W_v x_v) + (1 - z) * tanh(W_t x_t)."""
    torch.manual_seed(0)
    dims = {"visual": 4, "textual": 3}
    f = GatedFusion(dims, 5, dtype=torch.float64)
    x = inputs(dims, 6)
    hv = torch.tanh(f.proj["visual"](x["visual"]))
    ht = torch.tanh(f.proj["textual"](x["textual"]))
    g = f.gate(torch.cat([x["visual"], x["textual"]], -1))
    z = torch.sigmoid(g[:, :5] - g[:, 5:])
    torch.testing.assert_close(f(x), z * hv + (1 - z) * ht)


def reference(f: GatedFusion, feats, present) -> torch.Tensor:
    names = list(DIMS)
    batch = feats[names[0]].shape[0]
    out = torch.zeros(batch, f.out_dim, dtype=torch.float64)
    for i in range(batch):
        here = [m for m in names if bool(present[m][i])]
        if not here:
            out[i] = f.empty
            continue
        gate_in = torch.cat([feats[m][i] if m in here else f.missing[m] for m in names])
        logits = (f.gate.weight @ gate_in + f.gate.bias).reshape(len(names), f.out_dim)
        for d in range(f.out_dim):
            e = {m: torch.exp(logits[names.index(m), d]) for m in here}
            total = sum(e.values())
            for m in here:
                h = torch.tanh(f.proj[m].weight[d] @ feats[m][i] + f.proj[m].bias[d])
                out[i, d] += e[m] / total * h
    return out


def test_matches_loop_reference_with_absent_modalities() -> None:
    torch.manual_seed(1)
    f = GatedFusion(DIMS, 4, dtype=torch.float64)
    randomise(f)
    feats = inputs(DIMS, 5)
    present = {
        "image": torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool),
        "text": torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool),
        "audio": torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool),
    }
    with torch.no_grad():
        torch.testing.assert_close(f(feats, present), reference(f, feats, present))


@settings(max_examples=15, deadline=None)
@given(pattern=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=4,
                        max_size=4), seed=st.integers(0, 1000))
def test_output_in_tanh_range_and_absent_values_unused(pattern, seed: int) -> None:
    torch.manual_seed(seed)
    f = GatedFusion(DIMS, 4)
    obs = torch.tensor(pattern, dtype=torch.bool)
    present = {m: obs[:, j] for j, m in enumerate(DIMS)}
    feats = inputs(DIMS, 4, torch.float32, seed)
    poisoned = {m: x.where(present[m][:, None], torch.tensor(float("nan"))) for m, x in feats.items()}
    out = f(poisoned, present)
    torch.testing.assert_close(out, f(feats, present))
    rows = obs.any(-1)
    assert (out[rows].abs() < 1).all()
    torch.testing.assert_close(out[~rows], f.empty.detach().expand(int((~rows).sum()), 4))


def test_gradcheck_float64() -> None:
    torch.manual_seed(2)
    f = GatedFusion(DIMS, 3, dtype=torch.float64)
    randomise(f)
    names = list(DIMS)
    xs = tuple(x.requires_grad_() for x in inputs(DIMS, 2).values())
    present = {"audio": torch.tensor([False, True])}
    assert torch.autograd.gradcheck(lambda *a: f(dict(zip(names, a)), present), xs)


def test_errors() -> None:
    with pytest.raises(TypeError, match=r"GatedFusion: expected `dims` to be a non-empty mapping"):
        GatedFusion({}, 4)
    with pytest.raises(ValueError, match=r"GatedFusion: expected `dims\['a'\]` to be a positive"):
        GatedFusion({"a": 0}, 4)


def test_all_present_fast_path_equals_presence_path() -> None:
    """``present=None`` skips the presence masking; all-True presence must give the same."""
    torch.manual_seed(5)
    f = GatedFusion(DIMS, 4)
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()
    x = inputs(DIMS, 3, torch.float32)
    ones = {m: torch.ones(3, dtype=torch.bool) for m in DIMS}
    torch.testing.assert_close(f(x), f(x, ones))
