"""The tiled contrastive losses' tile bodies and workers: against the dense float64 losses,
fast body against general body, bitwise reproducibility, thread handling, chunk_size="auto"."""

from __future__ import annotations

import pytest
import torch

from mmfuse.functional import info_nce, siglip_loss
from mmfuse.functional.contrastive import _tiled as tiled_mod
from mmfuse.functional.contrastive._checks import _tile_for
from mmfuse.functional.contrastive._common import DEFAULT_TILE, _auto_tile, _run_row_blocks


@pytest.fixture
def two_threads():
    """Two intra-op threads (two tile workers), whatever the machine's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _data(n: int = 300, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    b = a + 0.7 * torch.randn(n, d, generator=g)  # correlated pairs
    w = torch.rand(n, generator=g) + 0.5
    w[::7] = 0  # removed samples
    groups = torch.randint(0, 40, (n,), generator=g)
    return a, b, w, groups


def _loss_and_grads(fn, a, b, t, dtype=torch.float32, **kw):
    a1, b1 = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    t1 = t.to(dtype).requires_grad_()
    loss = fn(a1, b1, t1, **kw)
    ga, gb, gt = torch.autograd.grad(loss, [a1, b1, t1])
    return loss, ga, gb, gt


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def _nce(a, b, t, **kw):
    return info_nce(a, b, temperature=t, **kw)


@pytest.mark.parametrize("kw", [
    {},
    {"direction": "a2b"},
    {"direction": "b2a", "label_smoothing": 0.1},
    {"weights": "w", "label_smoothing": 0.2},
    {"weights": "w", "positives": "groups"},  # several positives: the general body
])
def test_tiled_info_nce_matches_dense_float64(two_threads, kw):
    a, b, w, groups = _data()
    kw = {k: {"w": w, "groups": groups}.get(v, v) if isinstance(v, str) else v
          for k, v in kw.items()}
    t = torch.tensor(0.07)
    got = _loss_and_grads(_nce, a, b, t, chunk_size=64, **kw)  # ragged: 4 x 64 + 44
    want = _loss_and_grads(_nce, a, b, t, dtype=torch.float64, chunk_size=None, **kw)
    for x, y, name in zip(got, want, ("loss", "grad a", "grad b", "grad t")):
        assert _rel(x, y) < 1e-5, name


def test_fast_body_is_used_and_agrees_with_the_general_body(two_threads, monkeypatch):
    a, b, w, _ = _data(seed=1)
    t = torch.tensor(0.05)
    calls = []
    fast = tiled_mod._neg_lse_fast
    monkeypatch.setattr(tiled_mod, "_neg_lse_fast", lambda *x: calls.append(1) or fast(*x))
    kw = {"chunk_size": 50, "weights": w, "label_smoothing": 0.1}
    got = _loss_and_grads(_nce, a, b, t, **kw)
    assert calls  # one positive per anchor, |logits| <= 20: the fast body
    monkeypatch.setattr(tiled_mod, "_EXP_LIMIT", {torch.float32: -1.0, torch.float64: -1.0})
    calls.clear()
    general = _loss_and_grads(_nce, a, b, t, **kw)
    assert not calls
    for x, y, name in zip(got, general, ("loss", "grad a", "grad b", "grad t")):
        assert _rel(x, y) < 2e-6, name


def test_large_logits_take_the_general_body(two_threads, monkeypatch):
    a, b, _, _ = _data(seed=2)
    calls = []
    fast = tiled_mod._neg_lse_fast
    monkeypatch.setattr(tiled_mod, "_neg_lse_fast", lambda *x: calls.append(1) or fast(*x))
    t = torch.tensor(0.01)  # logits up to 100: exp(L) would overflow float32
    got = _loss_and_grads(_nce, a, b, t, chunk_size=64)
    want = _loss_and_grads(_nce, a, b, t, dtype=torch.float64)
    assert not calls
    for x, y, name in zip(got, want, ("loss", "grad a", "grad b", "grad t")):
        assert _rel(x, y) < 1e-5, name


def test_siglip_tiled_matches_dense_float64(two_threads):
    a, b, w, groups = _data(seed=3)

    def sig(x, y, t, **kw):
        return siglip_loss(x, y, scale=1 / t, bias=-3.0, **kw)

    t = torch.tensor(0.1)
    for kw in ({}, {"weights": w}, {"weights": w, "positives": groups}):
        got = _loss_and_grads(sig, a, b, t, chunk_size=64, **kw)
        want = _loss_and_grads(sig, a, b, t, dtype=torch.float64, chunk_size=None, **kw)
        for x, y, name in zip(got, want, ("loss", "grad a", "grad b", "grad scale")):
            assert _rel(x, y) < 1e-5, (name, kw)


@pytest.mark.parametrize("loss", ["info_nce", "siglip"])
def test_tiled_results_are_bitwise_reproducible(two_threads, loss):
    a, b, w, _ = _data(n=257, seed=4)

    def run():
        if loss == "info_nce":
            return _loss_and_grads(_nce, a, b, torch.tensor(0.07), chunk_size=32, weights=w,
                                   label_smoothing=0.1)
        return _loss_and_grads(lambda x, y, t, **kw: siglip_loss(x, y, scale=1 / t, **kw),
                               a, b, torch.tensor(0.1), chunk_size=32, weights=w)

    first, second = run(), run()
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_one_and_two_workers_agree():
    a, b, _, _ = _data(seed=5)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(_loss_and_grads(_nce, a, b, torch.tensor(0.07), chunk_size=40))
    finally:
        torch.set_num_threads(before)
    for x, y in zip(*out):
        assert _rel(x, y) < 1e-6


def test_workers_restore_the_thread_count_and_reraise(two_threads):
    seen: list[tuple[int, int]] = []

    def body(w: int, i0: int, i1: int) -> None:
        seen.append((w, torch.get_num_threads()))
        if i0 == 30:
            raise ValueError("boom in a worker")

    with pytest.raises(ValueError, match="boom in a worker"):
        _run_row_blocks(100, 10, 2, body)
    assert torch.get_num_threads() == 2
    assert {w for w, _ in seen} == {0, 1}
    assert all(n == 1 for _, n in seen)  # each worker runs single-threaded kernels
    blocks: list[tuple[int, int, int]] = []
    _run_row_blocks(25, 10, 2, lambda w, i0, i1: blocks.append((w, i0, i1)))
    assert sorted(blocks) == [(0, 0, 10), (0, 20, 25), (1, 10, 20)]  # block b -> worker b % 2


def test_auto_tile():
    assert _auto_tile(16384, 16384, 256, 2) == 512
    assert _auto_tile(16384, 16384, 64, 2) == 1024
    assert _auto_tile(16384, 16384, 16, 2) == 2048
    assert _auto_tile(16384, 16384, 4096, 2) == 256
    assert _auto_tile(1500, 1500, 256, 2) == 512
    assert _auto_tile(700, 700, 256, 2) == 350  # every thread gets rows
    assert _auto_tile(100_000, 100_000, 1, 1) == 2048  # buffers stay small


def test_auto_tile_is_for_cpu_only(two_threads):
    # the cache-sized tiles and the rows-per-thread cap are CPU reasons: on another device (one
    # worker walks the blocks) "auto" keeps DEFAULT_TILE; a given size or the dense path stays
    cpu, other = torch.empty(1100, 16), torch.empty(1100, 16, device="meta")
    assert _tile_for("auto", cpu, 1100, owner="t") == _auto_tile(1100, 1100, 16, 2) == 550
    assert _tile_for("auto", other, 1100, owner="t") == DEFAULT_TILE
    assert _tile_for(None, other, 1100, owner="t") == DEFAULT_TILE
    assert _tile_for(300, other, 1100, owner="t") == 300
    assert _tile_for("auto", cpu[:500], 500, owner="t") is None


def test_chunk_size_auto_uses_the_auto_tile(two_threads):
    a, b, _, _ = _data(n=1100, seed=6)
    tile = _auto_tile(1100, 1100, 16, 2)
    assert tile == 550
    auto = _loss_and_grads(_nce, a, b, torch.tensor(0.07), chunk_size="auto")
    explicit = _loss_and_grads(_nce, a, b, torch.tensor(0.07), chunk_size=tile)
    for x, y in zip(auto, explicit):
        assert torch.equal(x, y)
