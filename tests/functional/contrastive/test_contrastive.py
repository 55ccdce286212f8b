"""info_nce and siglip_loss against naive float64 references written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import ShapeError
from mmfuse.functional import info_nce, siglip_loss


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


def _positive_matrix(b: int, positives: torch.Tensor | None) -> torch.Tensor:
    if positives is None:
        return torch.eye(b, dtype=torch.bool)
    if positives.dim() == 1:
        return positives[:, None] == positives[None, :]
    return positives


def loop_info_nce(a, b, temperature, positives=None, weights=None, eps=0.0, direction="both"):
    """Multi-positive InfoNCE, one anchor and one positive at a time, in float64."""
    n = a.shape[0]
    logits = _normalize(a.double()) @ _normalize(b.double()).T / temperature
    pos = _positive_matrix(n, positives)
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    kept = [i for i in range(n) if w[i] != 0]

    def one_way(lg, pm):
        num, den = 0.0, 0.0
        for i in kept:
            ps = [j for j in kept if pm[i, j]]
            ns = [j for j in kept if not pm[i, j]]
            if not ps:
                continue
            term = 0.0
            for p in ps:  # the positive against the negatives only
                term = term - torch.log_softmax(torch.stack([lg[i, p]] + [lg[i, j] for j in ns]), 0)[0]
            term = term / len(ps)
            if eps > 0:
                row = lg[i, kept]
                term = (1 - eps) * term + eps * (torch.logsumexp(row, 0) - row.mean())
            num, den = num + w[i] * term, den + w[i]
        return num / den if den else lg.sum() * 0

    parts = []
    if direction in ("both", "a2b"):
        parts.append(one_way(logits, pos))
    if direction in ("both", "b2a"):
        parts.append(one_way(logits.T, pos.T))
    return sum(parts) / len(parts)


def clip_reference(a, b, temperature):
    """The usual dense formulation (CLIP), in float64."""
    logits = _normalize(a.double()) @ _normalize(b.double()).T / temperature
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def loop_siglip(a, b, scale, bias, positives=None, weights=None):
    n = a.shape[0]
    logits = scale * (_normalize(a.double()) @ _normalize(b.double()).T) + bias
    pos = _positive_matrix(n, positives)
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    total = 0.0
    for i in range(n):
        for j in range(n):
            if w[i] != 0 and w[j] != 0:
                z = 1.0 if pos[i, j] else -1.0
                total = total + w[i] * F.softplus(-z * logits[i, j])
    return total / w.sum()


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def leaves(*xs, dtype=None):
    return [x.detach().to(dtype or x.dtype).requires_grad_() for x in xs]


def assert_rel(got, want, tol=1e-5, what=""):
    got, want = got.double(), want.double()
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= tol * max(scale, 1e-2), f"{what}: error {err:.3g} vs scale {scale:.3g}"


# ----------------------------------------------------------------------------- InfoNCE


POSITIVES = {
    "pairs": lambda n, g: None,
    "groups": lambda n, g: torch.randint(0, 3, (n,), generator=g),
    "matrix": lambda n, g: torch.rand(n, n, generator=g) > 0.6,
}


@pytest.mark.parametrize("chunk", [None, 3], ids=["dense", "tiled"])
@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("kind", list(POSITIVES))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("direction", ["both", "a2b"])
def test_info_nce_matches_loop_reference(chunk, n, kind, weighted, eps, direction):
    g = torch.Generator().manual_seed(n + 10 * len(kind))
    a, b = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    t = torch.tensor(0.2)
    pos = POSITIVES[kind](n, g)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 0.0])[:n] if weighted else None
    a1, b1, t1 = leaves(a, b, t)
    loss = info_nce(a1, b1, temperature=t1, positives=pos, weights=w, label_smoothing=eps,
                    direction=direction, chunk_size=chunk)
    a2, b2, t2 = leaves(a, b, t, dtype=torch.float64)
    ref = loop_info_nce(a2, b2, t2, pos, w, eps, direction)
    assert_rel(loss, ref, 1e-5, "loss")
    if not ref.requires_grad:  # everything removed: the loss is a constant 0
        assert loss.item() == 0.0
        return
    for got, want, name in zip(grads(loss, [a1, b1, t1]), grads(ref, [a2, b2, t2]), "abt"):
        want = torch.zeros_like(a2) if want is None else want
        assert_rel(got, want, 1e-5, f"grad {name}")


@pytest.mark.parametrize(("n", "chunk", "temperature"), [
    (1024, None, 0.07),   # dense path
    (1000, 300, 0.01),    # ragged tiles (300, 300, 300, 100), scale 100
    (4096, None, 0.05),   # tiled automatically
])
def test_info_nce_large_batches_match_float64(n, chunk, temperature):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    b = b + 2 * a  # correlated pairs, like a trained model
    t = torch.tensor(temperature)
    a1, b1, t1 = leaves(a, b, t)
    loss = info_nce(a1, b1, temperature=t1, chunk_size=chunk)
    a2, b2, t2 = leaves(a, b, t, dtype=torch.float64)
    ref = clip_reference(a2, b2, t2)
    assert_rel(loss, ref, 1e-5, "loss")
    for got, want, name in zip(grads(loss, [a1, b1, t1]), grads(ref, [a2, b2, t2]), "abt"):
        assert_rel(got, want, 1e-5, f"grad {name}")


def test_info_nce_bfloat16_inputs_compute_in_float32():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=g).bfloat16()
    b = torch.randn(64, 8, generator=g).bfloat16()
    t = torch.tensor(0.05)
    for chunk in (None, 16):
        a1, b1, t1 = leaves(a, b, t)
        loss = info_nce(a1, b1, temperature=t1, chunk_size=chunk)
        assert loss.dtype == torch.float32  # promoted with the float32 temperature
        a2, b2, t2 = leaves(a, b, t, dtype=torch.float64)
        ref = clip_reference(a2, b2, t2)
        assert_rel(loss, ref, 1e-5, "loss")
        ga, gb, gt = grads(loss, [a1, b1, t1])
        ra, rb, rt = grads(ref, [a2, b2, t2])
        assert ga.dtype == torch.bfloat16
        assert_rel(gt, rt, 1e-5, "grad temperature")
        assert_rel(ga, ra, 1e-2, "grad a (bfloat16)")
        assert_rel(gb, rb, 1e-2, "grad b (bfloat16)")
    assert info_nce(a, b).dtype == torch.bfloat16  # a float temperature keeps the input dtype


@pytest.mark.parametrize("chunk", [None, 2])
def test_info_nce_degenerate_inputs_are_finite(chunk):
    same = torch.randn(1, 6).expand(5, 6).clone().requires_grad_()
    loss = info_nce(same, same, chunk_size=chunk)
    assert torch.allclose(loss, torch.log(torch.tensor(5.0)), atol=1e-6)  # all logits equal
    loss.backward()
    assert torch.isfinite(same.grad).all()

    a = torch.randn(4, 6)
    a[1] = 0
    b = torch.randn(4, 6)
    b[2] = 0
    a, b = leaves(a, b)
    loss = info_nce(a, b, chunk_size=chunk)
    ga, gb = grads(loss, [a, b])
    assert torch.isfinite(loss) and torch.isfinite(ga).all() and torch.isfinite(gb).all()

    one_a, one_b = leaves(torch.randn(1, 6), torch.randn(1, 6))
    loss = info_nce(one_a, one_b, chunk_size=chunk)
    assert loss.item() == 0.0  # the only candidate is the positive
    assert all(torch.equal(x, torch.zeros_like(x)) for x in grads(loss, [one_a, one_b]))


@pytest.mark.parametrize("temperature", [1e-3, 1e-5])
def test_info_nce_huge_scales_finite_and_paths_agree(temperature):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    out = []
    for chunk in (None, 4):
        a1, b1 = leaves(a, b)
        loss = info_nce(a1, b1, temperature=temperature, chunk_size=chunk)
        ga, gb = grads(loss, [a1, b1])
        assert torch.isfinite(loss) and torch.isfinite(ga).all() and torch.isfinite(gb).all()
        out.append((loss, ga, gb))
    for x, y in zip(*out):
        assert_rel(x, y, 1e-4)


def test_info_nce_removed_samples_do_not_matter():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    keep = torch.tensor([True, False, True, True, False, True])
    for chunk in (None, 4):
        full = info_nce(a, b, weights=keep, chunk_size=chunk)
        a2, b2 = a.clone(), b.clone()
        a2[~keep], b2[~keep] = float("nan"), 1e6
        assert torch.equal(info_nce(a2, b2, weights=keep, chunk_size=chunk), full)
        assert torch.allclose(full, info_nce(a[keep], b[keep]), atol=1e-6)
        a3 = a2.clone().requires_grad_()
        info_nce(a3, b2, weights=keep, chunk_size=chunk).backward()
        assert torch.isfinite(a3.grad).all() and (a3.grad[~keep] == 0).all()


def test_info_nce_logit_bias_changes_nothing():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    bias = torch.tensor(3.0, requires_grad=True)
    loss = info_nce(a, b, logit_bias=bias)
    assert torch.allclose(loss, info_nce(a, b))
    loss.backward()
    assert bias.grad == 0


def test_info_nce_gradcheck_tiled_float64():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 1, 0, 2, 1])
    w = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    for kw in ({}, {"positives": groups, "weights": w, "label_smoothing": 0.1}):
        assert torch.autograd.gradcheck(
            lambda x, y, z, kw=kw: info_nce(x, y, temperature=z, chunk_size=2, **kw), (a, b, t)
        )


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), chunk=st.integers(1, 7), seed=st.integers(0, 2**16),
       groups=st.booleans())
def test_tiled_equals_dense(n, chunk, seed, groups):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    pos = torch.randint(0, 3, (n,), generator=g) if groups else None
    dense = info_nce(a, b, positives=pos)
    tiled = info_nce(a, b, positives=pos, chunk_size=chunk)
    assert torch.allclose(dense, tiled, rtol=1e-5, atol=1e-6)


def test_info_nce_errors():
    a = torch.randn(3, 4)
    with pytest.raises(ShapeError, match=r"info_nce: expected `b` of shape \(B, D\) with B=3, D=4, got \(3, 5\)"):
        info_nce(a, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"info_nce: expected `a` and `b` with at least one row"):
        info_nce(a[:0], a[:0])
    with pytest.raises(TypeError, match=r"`positives` of shape \(B,\) to hold integer group ids"):
        info_nce(a, a, positives=torch.zeros(3))
    with pytest.raises(ShapeError, match=r"info_nce: expected `positives` of shape \(B, M\)"):
        info_nce(a, a, positives=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"unknown `direction` 'up'"):
        info_nce(a, a, direction="up")
    with pytest.raises(ValueError, match=r"`chunk_size` to be a positive int"):
        info_nce(a, a, chunk_size=0)
    with pytest.raises(ValueError, match=r"`temperature` to be a positive number"):
        info_nce(a, a, temperature=0.0)


# ----------------------------------------------------------------------------- SigLIP


@pytest.mark.parametrize("chunk", [None, 3], ids=["dense", "tiled"])
@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("kind", list(POSITIVES))
@pytest.mark.parametrize("weighted", [False, True])
def test_siglip_matches_loop_reference(chunk, n, kind, weighted):
    g = torch.Generator().manual_seed(n + 5 * len(kind))
    a, b = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    s, t = torch.tensor(7.0), torch.tensor(-3.0)
    pos = POSITIVES[kind](n, g)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 0.0])[:n] if weighted else None
    if w is not None and w.sum() == 0:
        w[0] = 1.0
    a1, b1, s1, t1 = leaves(a, b, s, t)
    loss = siglip_loss(a1, b1, scale=s1, bias=t1, positives=pos, weights=w, chunk_size=chunk)
    xs = leaves(a, b, s, t, dtype=torch.float64)
    ref = loop_siglip(*xs, pos, w)
    assert_rel(loss, ref, 1e-5, "loss")
    for got, want, name in zip(grads(loss, [a1, b1, s1, t1]), grads(ref, xs), "abst"):
        assert_rel(got, want, 1e-5, f"grad {name}")


def test_siglip_tiled_4096_matches_float64():
    n = 4096
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    b = b + a
    s, t = torch.tensor(100.0), torch.tensor(-10.0)
    a1, b1, s1, t1 = leaves(a, b, s, t)
    loss = siglip_loss(a1, b1, scale=s1, bias=t1)  # tiled automatically
    xs = leaves(a, b, s, t, dtype=torch.float64)
    logits = xs[2] * (_normalize(xs[0]) @ _normalize(xs[1]).T) + xs[3]
    labels = 2 * torch.eye(n, dtype=torch.float64) - 1
    ref = F.softplus(-labels * logits).sum() / n
    assert_rel(loss, ref, 1e-5, "loss")
    for got, want, name in zip(grads(loss, [a1, b1, s1, t1]), grads(ref, xs), "abst"):
        assert_rel(got, want, 1e-5, f"grad {name}")


def test_siglip_gradcheck_tiled_and_finite_edges():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *x: siglip_loss(x[0], x[1], scale=x[2], bias=x[3], chunk_size=2), (a, b, s, t)
    )
    z = torch.zeros(3, 4, requires_grad=True)
    loss = siglip_loss(z, z, scale=1e6, chunk_size=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_meaningless_weights_and_infinite_scales_are_refused() -> None:
    from mmfuse.alignment import InfoNCELoss, SigLIPLoss

    a, b = torch.randn(5, 4), torch.randn(5, 4)
    cases = [(-torch.ones(5), r"got -1\.0 at row 0"),
             (torch.tensor([1.0, -1, 0, 0, 0]), r"got -1\.0 at row 1"),
             (torch.tensor([1.0, float("nan"), 1, 1, 1]), r"got nan at row 1"),
             (torch.tensor([1.0, float("inf"), 1, 1, 1]), r"got inf at row 1")]
    for fn, name in ((info_nce, "info_nce"), (siglip_loss, "siglip_loss")):
        for w, got in cases:
            with pytest.raises(ValueError, match=rf"^{name}: expected `weights` finite and "
                               rf"non-negative, {got}\.$"):
                fn(a, b, weights=w)
        with pytest.raises(ValueError, match=rf"^{name}: expected `weights` with a positive sum"):
            fn(a, b, weights=torch.zeros(5))
    with pytest.raises(ValueError, match=r"^InfoNCELoss: expected `weights` finite"):
        InfoNCELoss()(a, b, weights=-torch.ones(5))
    with pytest.raises(ValueError, match=r"^SigLIPLoss: expected `scale` to be a finite positive "
                       r"number, got inf\.$"):
        SigLIPLoss(scale=float("inf"))
    with pytest.raises(ValueError, match=r"^InfoNCELoss: expected `temperature` to be a finite"):
        InfoNCELoss(temperature=float("inf"))
    # a bool mask leaving rows out is not a weight: all False stays allowed (nothing to learn)
    assert torch.isfinite(info_nce(a, b, weights=torch.ones(5, dtype=torch.bool)))
    # compiled code skips the value checks (they would read values and break the graph)
    compiled = torch.compile(info_nce, backend="eager", fullgraph=True)
    assert compiled(a, b, weights=torch.ones(5)).shape == ()
