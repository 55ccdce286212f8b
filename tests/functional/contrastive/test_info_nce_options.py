"""info_nce's explicit negatives and its reduction over several positives.

Explicit negatives against a float64 reference written from the info-nce-pytorch package's
documented formula (cross-entropy over [positive, negatives], positive at index 0) and against
the package itself when installed; ``reduction="pair"`` against pytorch-metric-learning's
NTXentLoss (which averages over positive pairs) and a loop. Tolerance: 1e-10 relative in
float64, 1e-5 for float32 against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfuse import ShapeError
from mmfuse.functional import info_nce


def negatives_reference(a, b, negatives, temperature, weights=None, eps=0.0):
    """-log softmax of [<a_i, b_i>, <a_i, n_m>...] / t at index 0, per query, in float64."""
    a, b, n = (F.normalize(x.double(), dim=-1) for x in (a, b, negatives))
    pos = (a * b).sum(1, keepdim=True)
    neg = a @ n.T if n.dim() == 2 else torch.einsum("bd,bmd->bm", a, n)
    logits = torch.cat([pos, neg], 1) / temperature
    per = F.cross_entropy(logits, torch.zeros(len(a), dtype=torch.long), reduction="none",
                          label_smoothing=eps)
    w = torch.ones(len(a), dtype=torch.float64) if weights is None else weights.double()
    return (w * per).sum() / w.sum()


def pair_reference(a, b, groups, temperature):
    """Mean over (anchor, positive) pairs of -log(e^{L_ap} / (e^{L_ap} + sum_neg e^{L_an}))."""
    logits = F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T / temperature
    terms = []
    for i in range(len(a)):
        neg = [j for j in range(len(b)) if groups[j] != groups[i]]
        for p in [j for j in range(len(b)) if groups[j] == groups[i]]:
            row = torch.stack([logits[i, p]] + [logits[i, j] for j in neg])
            terms.append(-torch.log_softmax(row, 0)[0])
    return torch.stack(terms).mean()


def _data(seed=0, n=7, m=9, d=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, n, d, generator=g, dtype=dtype)
    shared = torch.randn(m, d, generator=g, dtype=dtype)
    own = torch.randn(n, 4, d, generator=g, dtype=dtype)
    return a, b, shared, own


def _grads(fn, *xs):
    xs = [x.clone().requires_grad_() for x in xs]
    loss = fn(*xs)
    return (loss.detach(), *torch.autograd.grad(loss, xs))


def _rel(got, want):
    return ((got.double() - want.double()).abs().max()
            / want.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("which", ["shared", "own"])
@pytest.mark.parametrize("chunk", [None, 2, 4])
def test_explicit_negatives_match_the_formula(which, chunk):
    a, b, shared, own = _data()
    neg = shared if which == "shared" else own
    w = torch.rand(7, dtype=torch.float64) + 0.5
    for kw in ({}, {"weights": w}, {"label_smoothing": 0.1}):
        got = _grads(lambda x, y, n, kw=kw: info_nce(x, y, temperature=0.1, negatives=n,
                                                     chunk_size=chunk, **kw), a, b, neg)
        want = _grads(lambda x, y, n, kw=kw: negatives_reference(
            x, y, n, 0.1, kw.get("weights"), kw.get("label_smoothing", 0.0)), a, b, neg)
        for g, r in zip(got, want):
            assert _rel(g, r) < 1e-10


@pytest.mark.parametrize("which", ["shared", "own"])
def test_explicit_negatives_match_info_nce_pytorch(which):
    pkg = pytest.importorskip("info_nce")
    a, b, shared, own = _data(seed=1, dtype=torch.float32)
    neg = shared if which == "shared" else own
    mode = "unpaired" if which == "shared" else "paired"
    got = _grads(lambda x, y, n: info_nce(x, y, temperature=0.1, negatives=n), a, b, neg)
    want = _grads(lambda x, y, n: pkg.info_nce(x, y, n, temperature=0.1, negative_mode=mode),
                  a, b, neg)
    for g, r in zip(got, want):
        assert _rel(g, r) < 1e-5
    # without negatives info-nce-pytorch is the a -> b direction of info_nce
    assert _rel(info_nce(a, b, temperature=0.1, direction="a2b"),
                pkg.info_nce(a, b, temperature=0.1)) < 1e-5


def test_tiled_shared_negatives_float32_and_temperature_gradient():
    a, b, shared, _ = _data(seed=2, n=40, m=70, d=8, dtype=torch.float32)
    t = torch.tensor(0.07)
    dense = _grads(lambda x, n, temp: info_nce(x, b, temperature=temp, negatives=n), a, shared, t)
    tiled = _grads(lambda x, n, temp: info_nce(x, b, temperature=temp, negatives=n,
                                               chunk_size=16), a, shared, t)
    ref = _grads(lambda x, n, temp: negatives_reference(x, b, n, temp), a.double(),
                 shared.double(), t.double())
    for d_, t_, r in zip(dense, tiled, ref):
        assert _rel(d_, r) < 1e-5 and _rel(t_, r) < 1e-5


def test_removed_queries_and_their_negatives_do_not_matter():
    a, b, _, own = _data(seed=3)
    w = torch.ones(7, dtype=torch.bool)
    w[4] = False
    a2, own2 = a.clone(), own.clone()
    a2[4] = float("nan")
    own2[4] = float("nan")
    got = _grads(lambda x, n: info_nce(x, b, temperature=0.1, negatives=n, weights=w), a2, own2)
    want = negatives_reference(a[w], b[w], own[w], 0.1)
    assert _rel(got[0], want) < 1e-10
    assert all(torch.isfinite(g).all() for g in got[1:])
    assert (got[1][4] == 0).all() and (got[2][4] == 0).all()


@pytest.mark.parametrize("chunk", [None, 3])
def test_pair_reduction_matches_pytorch_metric_learning(chunk):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    a, b, _, _ = _data(seed=4, n=9)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3])  # uneven groups
    got = _grads(lambda x, y: info_nce(x, y, temperature=0.1, positives=groups,
                                       direction="a2b", reduction="pair", chunk_size=chunk),
                 a, b)
    # ref_labels must be another tensor object, or pml treats b as a and drops the diagonal
    want = _grads(lambda x, y: pml.NTXentLoss(temperature=0.1)(x, groups, ref_emb=y,
                                                                ref_labels=groups.clone()), a, b)
    loop = pair_reference(a, b, groups, 0.1)
    assert _rel(got[0], loop) < 1e-10
    for g, r in zip(got, want):
        assert _rel(g, r) < 1e-10
    anchor = info_nce(a, b, temperature=0.1, positives=groups, direction="a2b")
    assert abs(anchor - got[0]) > 1e-2  # uneven groups: the two reductions differ


def test_pair_and_anchor_agree_with_one_positive_each():
    a, b, _, _ = _data(seed=5)
    assert torch.allclose(info_nce(a, b, reduction="pair"), info_nce(a, b), rtol=1e-14)


def test_errors():
    a, b, shared, own = _data()
    with pytest.raises(ShapeError, match=r"info_nce: expected `negatives` of shape \(M, D\) "
                                         r"with D=5, got \(9, 4\)\."):
        info_nce(a, b, negatives=shared[:, :4])
    with pytest.raises(ShapeError, match=r"info_nce: expected `negatives` of shape \(B, M, D\) "
                                         r"with B=7, D=5, got \(6, 4, 5\)\."):
        info_nce(a, b, negatives=own[:6])
    with pytest.raises(ValueError, match=r"info_nce: expected `positives=None` with explicit "
                                         r"`negatives`"):
        info_nce(a, b, negatives=shared, positives=torch.arange(7))
    with pytest.raises(ValueError, match=r"info_nce: with explicit `negatives` the loss scores "
                                         r"the queries `a`; expected `direction` 'both' or "
                                         r"'a2b', got 'b2a'\."):
        info_nce(a, b, negatives=shared, direction="b2a")
    with pytest.raises(ValueError, match=r"info_nce: unknown `reduction` 'mean'; expected one "
                                         r"of \['anchor', 'pair'\]\."):
        info_nce(a, b, reduction="mean")
