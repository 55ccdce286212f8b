"""CrossAttentionFusion: a naive per-sample float64 reference, masks, NaN guards, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import ShapeError
from mmfuse.functional import masked_cross_attention, masked_mean
from mmfuse.fusion import CrossAttentionFusion, CrossAttentionFusionOutput

DIMS = {"video": 5, "text": 3, "audio": 4}
LENGTHS = {"video": 4, "text": 3, "audio": 2}


def tokens(batch: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, LENGTHS[m], d, generator=g, dtype=dtype) for m, d in DIMS.items()}


def layer_norm(x: torch.Tensor, mod: torch.nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def linear(x: torch.Tensor, mod: torch.nn.Linear) -> torch.Tensor:
    return x @ mod.weight.T + mod.bias


def softmax_loop(scores: list[float]) -> list[float]:
    top = max(scores)
    e = [math.exp(s - top) for s in scores]
    return [v / sum(e) for v in e]


def block_reference(block, x: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    """One sample: x (K, D) kept query tokens, ctx (C, D) kept context tokens or None."""
    if ctx is not None and ctx.shape[0] > 0:
        heads = block.num_heads
        q = linear(layer_norm(x, block.norm_q), block.q)
        kv = linear(layer_norm(ctx, block.norm_kv), block.kv)
        dim = q.shape[-1]
        k, v = kv[:, :dim], kv[:, dim:]
        hd = dim // heads
        att = torch.zeros_like(q)
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            for a in range(q.shape[0]):
                scores = [float(q[a, sl] @ k[c, sl]) / math.sqrt(hd) for c in range(k.shape[0])]
                w = softmax_loop(scores)
                att[a, sl] = sum(w[c] * v[c, sl] for c in range(k.shape[0]))
        x = x + linear(att, block.out)
    h = linear(F.gelu(linear(layer_norm(x, block.norm_mlp), block.mlp_in)), block.mlp_out)
    return x + h


def reference(f: CrossAttentionFusion, toks, masks, present):
    names = list(f.dims)
    batch = toks[names[0]].shape[0]
    fused = torch.zeros(batch, f.out_dim, dtype=torch.float64)
    states_out = {}
    for i in range(batch):
        kept = {m: [n for n in range(LENGTHS[m]) if bool(present[m][i]) and bool(masks[m][i, n])]
                for m in names}
        x = {m: linear(toks[m][i, kept[m]], f.proj[m]) for m in names}
        for layer in f.layers:
            x = {m: block_reference(
                     layer[m], x[m],
                     torch.cat([x[n] for n in names if n != m]) if names else None)
                 for m in names}
        pooled = []
        for m in names:
            s = layer_norm(x[m], f.norm[m])
            states_out[(i, m)] = s
            if s.shape[0] > 0:
                pooled.append(s.mean(0))
        p = torch.stack(pooled).mean(0) if pooled else f.missing
        fused[i] = linear(p, f.head)
    return fused, states_out


@pytest.mark.parametrize("depth", [1, 2])
def test_matches_naive_per_sample_reference(depth: int) -> None:
    torch.manual_seed(depth)
    f = CrossAttentionFusion(DIMS, 8, num_heads=2, depth=depth, dtype=torch.float64).eval()
    with torch.no_grad():
        f.missing.normal_()
    toks = tokens(5)
    masks = {
        "video": torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1],
                               [0, 0, 0, 0]], dtype=torch.bool),
        "text": torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 1, 1], [1, 1, 1]],
                             dtype=torch.bool),
    }
    present = {
        "video": torch.ones(5, dtype=torch.bool),
        "text": torch.tensor([True, True, False, True, False]),
        "audio": torch.tensor([True, False, False, True, False]),
    }
    full_masks = {**masks, "audio": torch.ones(5, 2, dtype=torch.bool)}
    with torch.no_grad():
        out = f(toks, masks, present, return_tokens=True)
        want, states = reference(f, toks, full_masks, present)
    assert isinstance(out, CrossAttentionFusionOutput)
    torch.testing.assert_close(out.fused, want)
    for (i, m), s in states.items():
        k = [n for n in range(LENGTHS[m]) if bool(present[m][i]) and bool(full_masks[m][i, n])]
        torch.testing.assert_close(out.tokens[m][i, k], s)
        dropped = [n for n in range(LENGTHS[m]) if n not in k]
        assert (out.tokens[m][i, dropped] == 0).all()
    # row 4: nothing kept anywhere (video fully masked, the others absent): missing, projected
    torch.testing.assert_close(out.fused[4], linear(f.missing, f.head).detach())


def test_fully_masked_rows_give_finite_output_and_gradients() -> None:
    torch.manual_seed(3)
    f = CrossAttentionFusion(DIMS, 8, num_heads=4, depth=2)
    toks = {m: t.float().requires_grad_() for m, t in tokens(3).items()}
    masks = {m: torch.zeros(3, n, dtype=torch.bool) for m, n in LENGTHS.items()}
    masks["video"][1] = True  # row 1: only video kept, so its queries have no key at all
    out = f(toks, masks)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in [*f.named_parameters(), *toks.items()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert (toks["text"].grad == 0).all()  # every text token masked: no gradient reaches it


def test_sdpa_guard_functional() -> None:
    q = torch.randn(2, 1, 3, 4)
    k = torch.randn(2, 1, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0] = False
    plain = F.scaled_dot_product_attention(q, k, k, attn_mask=mask[:, None, None, :])
    # Row 0 has no key: NaN on some backends and versions, zeros on others; always zero here,
    # whatever the masked keys hold (even NaN).
    poisoned = k.clone()
    poisoned[0] = float("nan")
    out = masked_cross_attention(q, poisoned, poisoned, mask)
    assert (out[0] == 0).all()
    torch.testing.assert_close(out[1], plain[1])
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(masked_mean(x, mask), torch.stack([torch.zeros(3), x[1].mean(0)]))


def test_masks_are_true_keep() -> None:
    torch.manual_seed(4)
    f = CrossAttentionFusion(DIMS, 8, num_heads=2, depth=1)
    toks = tokens(2, torch.float32)
    keep_first = {"video": torch.tensor([[True, False, False, False]] * 2)}
    only_first = {**toks, "video": toks["video"][:, :1]}
    torch.testing.assert_close(f(toks, keep_first), f(only_first))


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 4), min_size=3, max_size=3), seed=st.integers(0, 100))
def test_any_lengths_and_masks_finite(lengths: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    f = CrossAttentionFusion(DIMS, 4, num_heads=2, depth=1)
    toks = {m: torch.randn(3, n, DIMS[m], generator=g) for m, n in zip(DIMS, lengths)}
    masks = {m: torch.rand(3, n, generator=g) > 0.5 for m, n in zip(DIMS, lengths)}
    out = f(toks, masks)
    assert out.shape == (3, 4) and torch.isfinite(out).all()


def test_errors() -> None:
    f = CrossAttentionFusion(DIMS, 8, num_heads=2, depth=1)
    toks = tokens(2, torch.float32)
    with pytest.raises(ShapeError, match=r"CrossAttentionFusion: expected `masks\['text'\]` of "
                                         r"shape \(B, N\) with B=2, N=3, got \(2, 4\)\."):
        f(toks, {"text": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"CrossAttentionFusion: expected `masks` to be a mapping"):
        f(toks, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected `num_heads` to divide out_dim=8, got 3"):
        CrossAttentionFusion(DIMS, 8, num_heads=3, depth=1)
    with pytest.raises(ValueError, match=r"CrossAttentionFusion: expected `dropout` in \[0, 1\)"):
        CrossAttentionFusion(DIMS, 8, num_heads=2, depth=1, dropout=1.0)
    with pytest.raises(ValueError, match=r"expected `dims` to name at least 2 modalities, got"):
        CrossAttentionFusion({"video": 3}, 8, num_heads=2, depth=1)


def test_all_present_fast_path_equals_presence_path() -> None:
    torch.manual_seed(5)
    f = CrossAttentionFusion(DIMS, 8, num_heads=2, depth=1)
    toks = tokens(3, torch.float32)
    ones = {m: torch.ones(3, dtype=torch.bool) for m in DIMS}
    keep_all = {m: torch.ones(3, n, dtype=torch.bool) for m, n in LENGTHS.items()}
    torch.testing.assert_close(f(toks), f(toks, keep_all, ones))


def test_sizes_must_be_ints() -> None:
    from mmfuse.fusion import CrossAttentionFusion, LowRankTensorFusion

    with pytest.raises(TypeError, match=r"^CrossAttentionFusion: expected `num_heads` to be a "
                       r"positive int, got 2\.0\.$"):
        CrossAttentionFusion({"a": 4, "b": 4}, 4, num_heads=2.0, depth=1)  # type: ignore[arg-type]
    for arg, kw in (("rank", {"rank": 2.5}), ("out_dim", {"out_dim": float("inf")}),
                    ("rank", {"rank": True})):
        full = {"out_dim": 4, "rank": 2} | kw
        with pytest.raises(TypeError, match=rf"^LowRankTensorFusion: expected `{arg}` to be a "
                           r"positive int, got "):
            LowRankTensorFusion({"a": 3}, full["out_dim"], full["rank"])
