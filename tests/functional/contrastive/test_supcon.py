"""supcon_loss and nt_xent_loss against a naive float64 reference written from Khosla et al.
(2020), equations 2 (L_out) and 3 (L_in), and against pytorch-metric-learning's SupConLoss and
NTXentLoss; the tiled path against the dense one; edge cases and error messages.

Tolerances: float64 against the references 1e-10 (relative, values and gradients); float32
against float64 1e-5 relative."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from mmfuse import ShapeError
from mmfuse.functional import nt_xent_loss, supcon_loss


def reference(z: torch.Tensor, y: torch.Tensor, temperature: float, variant: str = "out",
              weights: torch.Tensor | None = None, reduction: str = "anchor") -> torch.Tensor:
    """The paper's formula, one anchor, one positive at a time, in float64.

    L_out: -1/|P(i)| sum_p log(exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t));
    L_in: -log(1/|P(i)| sum_p exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t)),
    A(i) every other kept sample, P(i) those of A(i) with the label of i. Anchors without a
    positive are left out; the result is the (weighted) mean over anchors, or over pairs.
    """
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-6)
    n = z.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    kept = [i for i in range(n) if w[i] != 0]
    num = den = z.sum() * 0
    for i in kept:
        others = [a for a in kept if a != i]
        pos = [p for p in others if y[p] == y[i]]
        if not pos:
            continue
        denom = sum(torch.exp(z[i] @ z[a] / temperature) for a in others)
        if variant == "out":
            term = -sum(torch.log(torch.exp(z[i] @ z[p] / temperature) / denom)
                        for p in pos) / len(pos)
        else:
            term = -torch.log(sum(torch.exp(z[i] @ z[p] / temperature) / denom
                                  for p in pos) / len(pos))
        wi = w[i] * (len(pos) if reduction == "pair" else 1)
        num, den = num + wi * term, den + wi
    return num / den if den else num


def _data(n: int = 12, d: int = 5, classes: int = 4, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,),
                                                                       generator=g)


def _grad(fn, z):
    z = z.clone().requires_grad_()
    loss = fn(z)
    (g,) = torch.autograd.grad(loss, z)
    return loss.detach(), g


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max()
            / want.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("chunk", [None, 5])
def test_supcon_matches_the_paper_formula(variant, chunk):
    z, y = _data()
    w = torch.rand(12, dtype=torch.float64) + 0.5
    w[3] = 0
    for kw in ({}, {"weights": w}):
        got, g = _grad(lambda x, kw=kw: supcon_loss(x, y, temperature=0.2, variant=variant,
                                                    chunk_size=chunk, **kw), z)
        want, gw = _grad(lambda x, kw=kw: reference(x, y, 0.2, variant, kw.get("weights")), z)
        assert _rel(got, want) < 1e-10
        assert _rel(g, gw) < 1e-10


def test_supcon_pair_reduction_matches_the_reference():
    z, y = _data(n=14, classes=3, seed=2)
    for chunk in (None, 4):
        got, g = _grad(lambda x, c=chunk: supcon_loss(x, y, reduction="pair", chunk_size=c), z)
        want, gw = _grad(lambda x: reference(x, y, 0.1, reduction="pair"), z)
        assert _rel(got, want) < 1e-10 and _rel(g, gw) < 1e-10
    # with uneven groups the two reductions differ
    assert abs(supcon_loss(z, y, reduction="pair") - supcon_loss(z, y)) > 1e-3


def test_supcon_in_is_at_most_out():
    # Jensen: log of a mean >= mean of logs, so L_in <= L_out (the paper, section 3.2.2)
    z, y = _data(n=20, classes=3, seed=5)
    assert supcon_loss(z, y, variant="in") < supcon_loss(z, y, variant="out")


@pytest.mark.parametrize("chunk", [None, 3])
def test_supcon_matches_pytorch_metric_learning(chunk):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        z, y = _data(n=16, d=8, classes=5, seed=1, dtype=dtype)
        got, g = _grad(lambda x, y=y: supcon_loss(x, y, temperature=0.1, chunk_size=chunk), z)
        want, gw = _grad(lambda x, y=y: pml.SupConLoss(temperature=0.1)(x, y), z)
        assert _rel(got, want) < tol
        assert _rel(g, gw) < tol


def test_supcon_views_layout_equals_flat_rows():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)  # (B, V, D)
    labels = torch.tensor([0, 1, 0, 2, 1, 1])
    flat = feats.transpose(0, 1).reshape(18, 4)
    assert torch.allclose(supcon_loss(feats, labels), supcon_loss(flat, labels.repeat(3)),
                          rtol=1e-12)
    # without labels each sample is its own class
    assert torch.allclose(supcon_loss(feats), supcon_loss(flat, torch.arange(6).repeat(3)),
                          rtol=1e-12)


@pytest.mark.parametrize("chunk", [None, 4])
def test_nt_xent_matches_pytorch_metric_learning_and_the_formula(chunk):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 7, 6, generator=g, dtype=torch.float64)
    ids = torch.arange(7).repeat(2)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = nt_xent_loss(a1, b1, temperature=0.07, chunk_size=chunk)
    ga, gb = torch.autograd.grad(loss, [a1, b1])
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    want = pml.NTXentLoss(temperature=0.07)(torch.cat([a2, b2]), ids)
    wa, wb = torch.autograd.grad(want, [a2, b2])
    assert _rel(loss, want) < 1e-10
    assert _rel(ga, wa) < 1e-10 and _rel(gb, wb) < 1e-10
    # and SimCLR's formula: 2B anchors, each against the 2B - 1 others
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / 0.07
    logits.fill_diagonal_(-math.inf)
    target = torch.cat([torch.arange(7, 14), torch.arange(7)])
    assert _rel(loss, torch.nn.functional.cross_entropy(logits, target)) < 1e-10


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("tile", [1, 7, 64])
def test_tiled_equals_dense(variant, tile):
    z, y = _data(n=45, d=6, classes=6, seed=7, dtype=torch.float32)
    w = torch.rand(45) + 0.5
    w[::9] = 0
    t = torch.tensor(0.1, requires_grad=True)

    def run(chunk):
        x, temp = z.clone().requires_grad_(), t.clone().detach().requires_grad_()
        loss = supcon_loss(x, y, temperature=temp, variant=variant, weights=w,
                           chunk_size=chunk)
        return (loss, *torch.autograd.grad(loss, [x, temp]))

    dense, tiled = run(None), run(tile)
    # both in float32, each against the float64 reference, and with each other
    ref = _grad(lambda x: reference(x, y, 0.1, variant, w), z.double())
    for got in (dense, tiled):
        assert _rel(got[0], ref[0]) < 1e-5 and _rel(got[1], ref[1]) < 1e-5
    assert _rel(tiled[1], dense[1]) < 1e-5
    assert _rel(tiled[2], dense[2]) < 1e-5  # the temperature's gradient


def test_tiled_gradcheck_float64():
    z, y = _data(n=9, d=3, classes=3, seed=8)
    t = torch.tensor(0.3, dtype=torch.float64)
    for variant in ("out", "in"):
        assert torch.autograd.gradcheck(
            lambda x, temp, v=variant: supcon_loss(x, y, temperature=temp, variant=v,
                                                   chunk_size=4),
            (z.clone().requires_grad_(), t.clone().requires_grad_()))


def test_anchors_without_a_positive_are_left_out_and_nothing_is_nan():
    z, _ = _data(n=6)
    y = torch.tensor([0, 0, 1, 2, 3, 4])  # only anchors 0 and 1 have a positive
    for chunk in (None, 2):
        for variant in ("out", "in"):
            got, g = _grad(lambda x, v=variant, c=chunk: supcon_loss(x, y, variant=v,
                                                                     chunk_size=c), z)
            assert _rel(got, reference(z, y, 0.1, variant)) < 1e-10
            assert torch.isfinite(g).all()
    # no anchor has a positive: the loss is 0, gradients 0 (pytorch-metric-learning: 0 too)
    for chunk in (None, 2):
        got, g = _grad(lambda x, c=chunk: supcon_loss(x, torch.arange(6), chunk_size=c), z)
        assert got == 0 and (g == 0).all()
    # one sample: no candidate at all
    got, g = _grad(lambda x: supcon_loss(x, torch.zeros(1, dtype=torch.long)), z[:1])
    assert got == 0 and (g == 0).all()


def test_one_class_has_no_negatives_and_follows_the_paper():
    # every other sample is a positive: L_out = logsumexp - mean, finite and >= 0
    # (pytorch-metric-learning returns 0 here: it requires a negative)
    z, _ = _data(n=5)
    y = torch.zeros(5, dtype=torch.long)
    for chunk in (None, 2):
        got = supcon_loss(z, y, chunk_size=chunk)
        assert _rel(got, reference(z, y, 0.1)) < 1e-10 and got > 0


def test_removed_samples_do_not_matter_even_nan():
    z, y = _data(n=8)
    w = torch.ones(8, dtype=torch.bool)
    w[2] = False
    z2 = z.clone()
    z2[2] = float("nan")
    for chunk in (None, 3):
        got, g = _grad(lambda x, c=chunk: supcon_loss(x, y, weights=w, chunk_size=c), z2)
        assert _rel(got, reference(z, y, 0.1, weights=w.double())) < 1e-10
        assert torch.isfinite(g).all() and (g[2] == 0).all()


@settings(deadline=None, max_examples=20)
@given(n=st.integers(1, 12), classes=st.integers(1, 5), tile=st.integers(1, 6),
       seed=st.integers(0, 100))
def test_property_tiled_equals_reference(n, classes, tile, seed):
    z, y = _data(n=n, d=3, classes=classes, seed=seed)
    for variant in ("out", "in"):
        got = supcon_loss(z, y, variant=variant, chunk_size=tile)
        want = reference(z, y, 0.1, variant)
        assert torch.isfinite(got)
        assert abs(got.item() - want.item()) <= 1e-10 * max(1.0, abs(want.item()))


def test_dtype_follows_the_inputs():
    z, y = _data(dtype=torch.float32)
    assert supcon_loss(z, y).dtype == torch.float32
    assert supcon_loss(z.bfloat16(), y).dtype == torch.bfloat16
    assert supcon_loss(z.double(), y).dtype == torch.float64


def test_errors():
    z, y = _data()
    with pytest.raises(ValueError, match=r"supcon_loss: expected `labels` of shape \(N,\) for "
                                         r"`features` of shape \(N, D\)"):
        supcon_loss(z)
    with pytest.raises(ShapeError, match=r"supcon_loss: expected `features` of shape \(N, D\) "
                                         r"with labels, or \(B, V, D\) \(V views per sample\), "
                                         r"got \(12,\)\."):
        supcon_loss(z[:, 0], y)
    with pytest.raises(ShapeError, match=r"supcon_loss: expected `labels` of shape \(B,\) with "
                                         r"B=12, got \(11,\)\."):
        supcon_loss(z, y[:11])
    with pytest.raises(TypeError, match=r"supcon_loss: expected `labels` to hold integer class "
                                        r"ids, got torch.float32\."):
        supcon_loss(z, y.float())
    with pytest.raises(ValueError, match=r"supcon_loss: unknown `variant` 'mid'; expected one "
                                         r"of \['out', 'in'\]\."):
        supcon_loss(z, y, variant="mid")
    with pytest.raises(ValueError, match=r"supcon_loss: `reduction='pair'` averages a per-pair "
                                         r"loss, which only `variant='out'` has"):
        supcon_loss(z, y, variant="in", reduction="pair")
    with pytest.raises(ValueError, match=r"supcon_loss: expected `features` with at least one "
                                         r"row, got \(0, 5\)\."):
        supcon_loss(z[:0], y[:0])
    with pytest.raises(ShapeError, match=r"nt_xent_loss: expected `b` of shape \(B, D\) with "
                                         r"B=12, D=5, got \(12, 4\)\."):
        nt_xent_loss(z, z[:, :4])


class _LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an op returns while active (this thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("variant", ["out", "in"])
def test_tiled_path_never_holds_the_full_logit_matrix(variant):
    n, d, tile = 512, 4, 32
    z, y = _data(n=n, d=d, classes=20, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker: every tile runs in this thread, where the mode is
    try:
        sizes = {}
        for chunk in (None, tile):
            x = z.clone().requires_grad_()
            with _LargestTensor() as mode:
                supcon_loss(x, y, variant=variant, chunk_size=chunk).backward()
            sizes[chunk] = mode.largest
    finally:
        torch.set_num_threads(threads)
    assert sizes[None] >= n * n  # the dense path does hold it: the check can fail
    assert sizes[tile] <= max(n * d, tile * tile)  # O(N x D + tile^2)


def test_two_tile_workers_match_one_and_are_reproducible():
    z, y = _data(n=70, d=6, classes=5, seed=9, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 2):  # two workers walk the row blocks with 2 threads
            torch.set_num_threads(n_threads)
            results.append(_grad(lambda x: supcon_loss(x, y, variant="in", chunk_size=8), z))
    finally:
        torch.set_num_threads(threads)
    (l1, g1), (l2, g2), (l3, g3) = results
    assert torch.equal(l2, l3) and torch.equal(g2, g3)  # bitwise, run to run
    assert _rel(l2, l1) < 1e-6 and _rel(g2, g1) < 1e-5
