"""NLGateFusion: MultiBench's NL-gate written from its design (two modalities), a per-sample
loop reference for more modalities and presence, the missing query."""

from __future__ import annotations

import pytest
import torch

from fusion._reference import random_features, randomise
from mmfuse.functional import nl_gate
from mmfuse.fusion import NLGateFusion

DIMS = {"video": 5, "audio": 3, "text": 4}


def multibench_design(x0, x1, q_lin, k_lin, v_lin, thw: int, c: int, tf: int) -> torch.Tensor:
    """The NL-gate of Wang et al. (2020, F4) as MultiBench lays it out: q viewed (thw, c),
    k viewed (c, tf), v viewed (tf, c); flatten(q + softmax(q k, over tf) v)."""
    q = q_lin(x0).reshape(-1, thw, c)
    k = k_lin(x1).reshape(-1, c, tf)
    v = v_lin(x1).reshape(-1, tf, c)
    return torch.flatten(q + torch.softmax(q @ k, dim=2) @ v, 1)


def test_two_modalities_match_the_multibench_design() -> None:
    torch.manual_seed(0)
    dims = {"video": 6, "audio": 5}
    f = NLGateFusion(dims, "video", 4, query_tokens=3, key_tokens=2, dtype=torch.float64)
    x = random_features(dims, 7)
    want = multibench_design(x["video"], x["audio"], f.q, f.k["audio"], f.v["audio"], 3, 4, 2)
    torch.testing.assert_close(f(x), want)
    assert f.out_dim == 12 and f(x).shape == (7, 12)


def reference(f: NLGateFusion, feats, present) -> torch.Tensor:
    rows = []
    c, kt = f.channels, f.key_tokens
    for i in range(feats[f.query].shape[0]):
        if bool(present[f.query][i]):
            q = f.q(feats[f.query][i]).reshape(f.query_tokens, c)
        else:
            q = f.missing.reshape(f.query_tokens, c)
        out = q.clone()
        keys, values = [], []
        for m in f.context:
            if bool(present[m][i]):
                keys.append(f.k[m](feats[m][i]).reshape(c, kt))
                values.append(f.v[m](feats[m][i]).reshape(kt, c))
        if keys:
            logits = q @ torch.cat(keys, 1)  # (Q, K')
            w = logits.exp() / logits.exp().sum(1, keepdim=True)
            out = out + w @ torch.cat(values, 0)
        rows.append(out.flatten())
    return torch.stack(rows)


def test_matches_loop_reference_with_presence() -> None:
    torch.manual_seed(0)
    f = NLGateFusion(DIMS, "audio", 3, query_tokens=2, key_tokens=4, dtype=torch.float64)
    randomise(f)
    x = random_features(DIMS, 9)
    g = torch.Generator().manual_seed(2)
    present = {m: torch.rand(9, generator=g) > 0.4 for m in DIMS}
    for m in DIMS:
        present[m][0] = False  # row 0: nothing present -> the missing query
    present["audio"][1], present["video"][1], present["text"][1] = True, False, False
    out = f(x, present)
    torch.testing.assert_close(out, reference(f, x, present))
    torch.testing.assert_close(out[0], f.missing)
    torch.testing.assert_close(out[1], f.q(x["audio"][1]))  # no context: the query itself


def test_absent_equals_the_model_on_the_present_subset() -> None:
    torch.manual_seed(0)
    f = NLGateFusion(DIMS, "video", 4, key_tokens=2, dtype=torch.float64)
    randomise(f)
    x = random_features(DIMS, 3)
    present = {"video": torch.tensor([True, False, True]),
               "audio": torch.tensor([False, True, True]),
               "text": torch.tensor([True, True, False])}
    out = f(x, present)
    for i in range(3):
        subset = {m: x[m][i : i + 1] for m in DIMS if bool(present[m][i])}
        torch.testing.assert_close(out[i : i + 1], f(subset))


def test_absent_values_never_reach_output_or_gradient() -> None:
    torch.manual_seed(0)
    f = NLGateFusion(DIMS, "video", 4, key_tokens=2)
    x = random_features(DIMS, 3, dtype=torch.float32)
    present = {"video": torch.tensor([True, False, True]), "text": torch.tensor([False, True, True])}
    x["video"][1] = float("nan")
    x["text"][0] = float("inf")
    out = f(x, present)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_functional_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[True, False, True, True, False], [False] * 5])
    assert torch.autograd.gradcheck(lambda *t: nl_gate(*t, obs), (q, k, v))
    torch.testing.assert_close(nl_gate(q, k, v, obs)[1], q[1].flatten())


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"NLGateFusion: unknown `query` 'depth'; expected one "
                                         r"of \['video', 'audio', 'text'\]"):
        NLGateFusion(DIMS, "depth", 4)
    with pytest.raises(ValueError, match=r"NLGateFusion: expected `dims` to name at least 2 "
                                         r"modalities \(a query modality"):
        NLGateFusion({"video": 5}, "video", 4)
    with pytest.raises(ValueError, match=r"NLGateFusion: expected `key_tokens` to be a positive "
                                         r"int, got 0"):
        NLGateFusion(DIMS, "video", 4, key_tokens=0)


def test_exports_with_a_dynamic_batch() -> None:
    f = NLGateFusion(DIMS, "video", 4, query_tokens=2, key_tokens=3).eval()
    x = random_features(DIMS, 4, dtype=torch.float32)
    present = {m: torch.tensor([True, False, True, True]) for m in DIMS}
    batch = torch.export.Dim("B", min=2, max=64)
    ep = torch.export.export(f, (), {"features": x, "present": present}, dynamic_shapes={
        "features": {m: {0: batch} for m in DIMS}, "present": {m: {0: batch} for m in DIMS}})
    x7 = random_features(DIMS, 7, dtype=torch.float32, seed=3)
    p7 = {m: torch.rand(7, generator=torch.Generator().manual_seed(4)) > 0.5 for m in DIMS}
    torch.testing.assert_close(ep.module()(features=x7, present=p7), f(x7, p7))
