"""SpatioTemporalAttention and the masked attention math, against naive float64 references."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from mmfuse import ShapeError
from mmfuse.alignment import AttentionOutput, SpatioTemporalAttention
from mmfuse.functional import masked_attention, sinusoidal_encoding_3d


def naive_sinusoidal(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    """Channels [time | height | width | zeros], each group g = 2*(dim//6) wide, loops."""
    g = 2 * (dim // 6)
    out = torch.zeros(t, h, w, dim, dtype=torch.float64)
    for axis, n in enumerate((t, h, w)):
        for pos in range(n):
            for i in range(g // 2):
                freq = 10000.0 ** (-(2 * i) / g)
                idx = [slice(None)] * 3
                idx[axis] = slice(pos, pos + 1)
                out[idx[0], idx[1], idx[2], axis * g + 2 * i] = math.sin(pos * freq)
                out[idx[0], idx[1], idx[2], axis * g + 2 * i + 1] = math.cos(pos * freq)
    return out


def naive_positions(m: SpatioTemporalAttention, t: int, h: int, w: int) -> torch.Tensor:
    if m.pos is None:
        return torch.zeros((), dtype=torch.float64)
    if m.pos.kind == "sinusoidal":
        return naive_sinusoidal(t, h, w, m.video_dim)
    et, eh, ew = (p.detach().double() for p in m.pos.tables)
    out = torch.zeros(t, h, w, m.video_dim, dtype=torch.float64)
    for i in range(t):
        for j in range(h):
            for k in range(w):
                out[i, j, k] = et[i] + eh[j] + ew[k]
    return out


def naive_reference(m: SpatioTemporalAttention, video, text, key_mask=None, text_mask=None):
    """Per (sample, head, query) softmax over the kept tokens, in float64, with the module's
    own weights. key_mask: (B, T, H, W) or None. Returns output (B, L, D), maps (B, h, L, N)."""
    sd = {k: v.detach().double() for k, v in m.state_dict().items()}
    video, text = video.double(), text.double()
    b, t, h, w, dv = video.shape
    n, nl, d_model = t * h * w, text.shape[1], m.dim
    x = (video + naive_positions(m, t, h, w)).reshape(b, n, dv)
    q = text @ sd["q_proj.weight"].T + sd["q_proj.bias"]
    k = x @ sd["k_proj.weight"].T + sd["k_proj.bias"]
    v = x @ sd["v_proj.weight"].T + sd["v_proj.bias"]
    heads, hd = m.num_heads, d_model // m.num_heads
    mixed = torch.zeros(b, nl, d_model, dtype=torch.float64)
    maps = torch.zeros(b, heads, nl, n, dtype=torch.float64)
    valid = torch.zeros(b, nl, dtype=torch.bool)
    for i in range(b):
        keep = torch.ones(n, dtype=torch.bool) if key_mask is None else key_mask[i].reshape(n)
        for j in range(nl):
            if not keep.any() or (text_mask is not None and not text_mask[i, j]):
                continue
            valid[i, j] = True
            for a in range(heads):
                sl = slice(a * hd, (a + 1) * hd)
                scores = torch.tensor([
                    float(q[i, j, sl] @ k[i, r, sl]) / math.sqrt(hd) if keep[r] else -math.inf
                    for r in range(n)
                ], dtype=torch.float64)
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                maps[i, a, j] = weights
                mixed[i, j, sl] = weights @ v[i, :, sl]
    out = mixed @ sd["out_proj.weight"].T + sd["out_proj.bias"]
    return out * valid[..., None], maps


def make(b=2, t=3, h=2, w=3, dv=6, nl=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, h, w, dv, generator=g), torch.randn(b, nl, d, generator=g)


@pytest.mark.parametrize("pos", [None, "learned", "sinusoidal"])
def test_matches_naive_reference(pos):
    torch.manual_seed(0)
    m = SpatioTemporalAttention(8, 2, video_dim=6, pos_encoding=pos).double()
    if m.pos is not None and m.pos.kind == "learned":
        for p in m.pos.tables:  # make the positions matter
            torch.nn.init.normal_(p)
    video, text = make()
    want, maps = naive_reference(m, video, text)
    res = m(video.double(), text.double(), return_attention=True)
    assert isinstance(res, AttentionOutput)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention, maps.reshape(2, 2, 4, 3, 2, 3))
    torch.testing.assert_close(m(video.double(), text.double()), want)  # the fused path


def test_masks_match_naive_reference_and_maps_sum_to_one():
    torch.manual_seed(1)
    m = SpatioTemporalAttention(8, 2, video_dim=6).double()
    video, text = make(b=3)
    g = torch.Generator().manual_seed(3)
    key_mask = torch.rand(3, 3, 2, 3, generator=g) > 0.5
    key_mask[1] = False  # no visual key at all
    text_mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    want, maps = naive_reference(m, video, text, key_mask, text_mask)
    res = m(video.double(), text.double(), video_mask=key_mask, text_mask=text_mask,
            return_attention=True)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention.flatten(3), maps)
    fused = m(video.double(), text.double(), video_mask=key_mask, text_mask=text_mask)
    torch.testing.assert_close(fused, want)
    sums = res.attention.sum(dim=(-3, -2, -1))  # (B, heads, L)
    valid = text_mask & key_mask.flatten(1).any(1)[:, None]  # (B, L)
    torch.testing.assert_close(sums, valid[:, None, :].expand_as(sums).double())
    masked_out = ~key_mask[:, None, None].expand_as(res.attention)
    assert bool((res.attention[masked_out] == 0).all())
    assert bool((res.output[1] == 0).all()) and bool((res.output[0, 2] == 0).all())


def test_frame_mask_equals_token_mask_and_dropping_frames():
    torch.manual_seed(2)
    m = SpatioTemporalAttention(8, 2, video_dim=6).eval()
    video, text = make(b=2, t=4)
    frames = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    a = m(video, text, video_mask=frames)
    b = m(video, text, video_mask=frames[:, :, None, None].expand(2, 4, 2, 3))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], m(video[0, :2], text[0]))  # padded frames = absent frames


def test_masked_values_change_nothing():
    torch.manual_seed(3)
    m = SpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="learned").eval()
    video, text = make(b=3)
    g = torch.Generator().manual_seed(4)
    key_mask = torch.rand(3, 3, 2, 3, generator=g) > 0.4
    key_mask[2] = False
    text_mask = torch.rand(3, 4, generator=g) > 0.3
    noisy_video = video.where(key_mask[..., None], torch.full_like(video, float("inf")))
    noisy_text = text.where(text_mask[..., None], torch.full_like(text, float("nan")))
    a = m(video, text, video_mask=key_mask, text_mask=text_mask, return_attention=True)
    b = m(noisy_video, noisy_text, video_mask=key_mask, text_mask=text_mask,
          return_attention=True)
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.attention, b.attention)
    torch.testing.assert_close(
        m(video, text, video_mask=key_mask, text_mask=text_mask),
        m(noisy_video, noisy_text, video_mask=key_mask, text_mask=text_mask),
    )


@pytest.mark.parametrize("need_weights", [False, True])
def test_all_masked_rows_are_zero_with_finite_gradients(need_weights):
    torch.manual_seed(4)
    m = SpatioTemporalAttention(8, 2, video_dim=6)
    video, text = make(b=2)
    video.requires_grad_(True)
    text.requires_grad_(True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 0] = True
    res = m(video, text, video_mask=mask, return_attention=True) if need_weights else None
    out = res.output if res is not None else m(video, text, video_mask=mask)
    assert bool((out[0] == 0).all())
    assert bool(torch.isfinite(out).all())
    out.sum().backward()
    for p in [video, text, *m.parameters()]:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    assert bool((video.grad[0] == 0).all())  # nothing flows from masked frames


def test_batched_equals_unbatched():
    torch.manual_seed(5)
    m = SpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="sinusoidal").eval()
    video, text = make(b=3)
    mask = torch.rand(3, 3, 2, 3) > 0.3
    tmask = torch.rand(3, 4) > 0.3
    full = m(video, text, video_mask=mask, text_mask=tmask, return_attention=True)
    for i in range(3):
        one = m(video[i], text[i], video_mask=mask[i], text_mask=tmask[i], return_attention=True)
        assert one.output.shape == (4, 8) and one.attention.shape == (2, 4, 3, 2, 3)
        torch.testing.assert_close(one.output, full.output[i])
        torch.testing.assert_close(one.attention, full.attention[i])
        frames = m(video[i], text[i], video_mask=mask[i].any(-1).any(-1))
        torch.testing.assert_close(frames, m(video[i:i + 1], text[i:i + 1],
                                             video_mask=mask[i:i + 1].any(-1).any(-1))[0])


def test_gradcheck_float64_both_paths():
    torch.manual_seed(6)
    m = SpatioTemporalAttention(4, 2, video_dim=3).double()
    video = torch.randn(1, 2, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    text = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False]])
    assert torch.autograd.gradcheck(lambda v, t: m(v, t, video_mask=mask), (video, text))
    assert torch.autograd.gradcheck(
        lambda v, t: m(v, t, return_attention=True).attention, (video, text))


def test_every_parameter_gets_a_finite_gradient():
    m = SpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="learned")
    video, text = make()
    m(video, text).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        if not name.startswith("pos"):
            assert bool(p.grad.abs().sum() > 0), name


def test_fused_flash_kernel_runs_without_maps():
    m = SpatioTemporalAttention(16, 2, video_dim=16)
    video, text = make(b=2, t=2, h=4, w=4, dv=16, nl=3, d=16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        m(video, text, video_mask=torch.ones(2, 2, dtype=torch.bool)).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in n for n in names), sorted(names)
    assert not any("_scaled_dot_product_attention_math" in n for n in names)


def test_dropout_warns_once_on_the_slow_path():
    torch.manual_seed(7)
    m = SpatioTemporalAttention(8, 2, video_dim=6, dropout=0.5).train()
    video, text = make()
    with pytest.warns(UserWarning, match="dropout=0.5 in training rules out the fused"):
        a = m(video, text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = m(video, text)
        m.eval()
        c, d = m(video, text), m(video, text)
    assert not torch.equal(a, b)  # dropout is active in training
    torch.testing.assert_close(c, d)


def test_sinusoidal_encoding_matches_loops_and_separates_axes():
    enc = sinusoidal_encoding_3d(3, 4, 5, 14, dtype=torch.float64)
    torch.testing.assert_close(enc, naive_sinusoidal(3, 4, 5, 14))
    assert not torch.allclose(enc[1, 0, 0], enc[0, 1, 0])
    assert not torch.allclose(enc[0, 1, 0], enc[0, 0, 1])


def test_compiled_fullgraph_with_maps_equals_eager():
    torch._dynamo.reset()
    m = SpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="sinusoidal").eval()
    video, text = make()
    mask = torch.rand(2, 3) > 0.3
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    a = compiled(video, text, video_mask=mask, return_attention=True)
    b = m(video, text, video_mask=mask, return_attention=True)
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.attention, b.attention)


def test_functional_weights_path_equals_fused_path():
    g = torch.Generator().manual_seed(8)
    q = torch.randn(3, 2, 5, 4, generator=g)
    k = torch.randn(3, 2, 7, 4, generator=g)
    v = torch.randn(3, 2, 7, 6, generator=g)
    key_mask = torch.rand(3, 7, generator=g) > 0.5
    key_mask[0] = False
    qmask = torch.rand(3, 5, generator=g) > 0.3
    fused, none = masked_attention(q, k, v, key_mask, qmask)
    explicit, weights = masked_attention(q, k, v, key_mask, qmask, need_weights=True)
    assert none is None and weights is not None
    torch.testing.assert_close(fused, explicit)
    assert bool((fused[0] == 0).all())


def test_errors_name_module_argument_expected_and_got():
    m = SpatioTemporalAttention(8, 2, video_dim=6)
    video, text = make()
    with pytest.raises(ShapeError, match=r"SpatioTemporalAttention: expected `video` of shape "
                       r"\(B, T, H, W, Dv\) or \(T, H, W, Dv\) with Dv=6, got \(2, 3, 6\)"):
        m(video[:, 0, 0], text)
    with pytest.raises(ShapeError, match=r"expected `video` of shape \(B, T, H, W, Dv\) with "
                       r"Dv=6, got \(2, 3, 2, 3, 5\)"):
        m(video[..., :5], text)
    with pytest.raises(ShapeError, match=r"expected `text` of shape \(B, L, D\) with B=2, D=8"):
        m(video, text[:1])
    with pytest.raises(ShapeError, match=r"expected `video` of shape \(B, T, H, W, Dv\) with Dv=6 "
                       r"like the batched `text` of shape \(2, 4, 8\)"):
        m(video[0], text)  # the video lost its batch: blame it, not the text
    with pytest.raises(ShapeError, match=r"expected `video_mask` of shape \(B, T\) with B=2, T=3"):
        m(video, text, video_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"`video_mask` of shape \(B, T, H, W\) with B=2, T=3, "
                       r"H=2, W=3, got \(2, 3, 2, 2\)"):
        m(video, text, video_mask=torch.ones(2, 3, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"expected `text_mask` to be a torch.bool tensor"):
        m(video, text, text_mask=torch.ones(2, 4))
    learned = SpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="learned", max_grid=(2, 8, 8))
    with pytest.raises(ShapeError, match=r"expected `video` with \(T, H, W\) at most \(2, 8, 8\) "
                       r"for the learned positional encoding, got \(3, 2, 3\)"):
        learned(video, text)


def test_config_errors_fail_in_init():
    with pytest.raises(ValueError, match=r"expected `num_heads` to divide dim=8, got 3"):
        SpatioTemporalAttention(8, 3)
    with pytest.raises(ValueError, match=r"unknown `pos_encoding` 'rope'; expected one of"):
        SpatioTemporalAttention(8, 2, pos_encoding="rope")
    with pytest.raises(ValueError, match=r"expected `dropout` in \[0, 1\), got 1.5"):
        SpatioTemporalAttention(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match=r"expected `video_dim` to be a positive int"):
        SpatioTemporalAttention(8, 2, video_dim=0)


def test_device(device):
    torch.manual_seed(9)
    m = SpatioTemporalAttention(8, 2, video_dim=6).to(device)
    video, text = make()
    mask = torch.rand(2, 3) > 0.3
    out = m(video.to(device), text.to(device), video_mask=mask.to(device), return_attention=True)
    want, maps = naive_reference(m.cpu(), video, text, mask[:, :, None, None].expand(2, 3, 2, 3))
    torch.testing.assert_close(out.output.cpu().double(), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.attention.cpu().double().flatten(3), maps, atol=1e-5, rtol=1e-4)


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3),
       nl=st.integers(1, 4), heads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 1000))
def test_property_matches_reference_over_sizes(b, t, h, w, nl, heads, seed):
    torch.manual_seed(seed)
    m = SpatioTemporalAttention(8, heads, video_dim=5).double()
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, t, h, w, 5, generator=g, dtype=torch.float64)
    text = torch.randn(b, nl, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, h, w, generator=g) > 0.3
    want, maps = naive_reference(m, video, text, mask)
    res = m(video, text, video_mask=mask, return_attention=True)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention.flatten(3), maps)
    torch.testing.assert_close(m(video, text, video_mask=mask), want)


def test_compiled_training_with_dropout_runs_fullgraph():
    """The slow-path warning is eager-only, so training with dropout still compiles."""
    from mmfuse.alignment import FactorizedSpatioTemporalAttention

    video, text = make()
    for cls in (SpatioTemporalAttention, FactorizedSpatioTemporalAttention):
        torch._dynamo.reset()
        m = cls(8, 2, video_dim=6, dropout=0.2).train()
        compiled = torch.compile(m, backend="eager", fullgraph=True)
        out = compiled(video, text)
        out.sum().backward()
        assert out.shape == (2, 4, 8) and bool(torch.isfinite(out).all())
        with pytest.warns(UserWarning, match="rules out the fused flash-attention kernel"):
            m(video, text)  # eager still says so once


def test_a_video_without_its_batch_is_blamed_not_the_text() -> None:
    from mmfuse.alignment import SpatioTemporalAttention

    m = SpatioTemporalAttention(8, 2)
    with pytest.raises(ShapeError, match=r"^SpatioTemporalAttention: expected `video` of shape "
                       r"\(B, T, H, W, Dv\) with Dv=8 like the batched `text` of shape \(2, 4, 8\), "
                       r"got \(2, 3, 3, 8\)\.$"):
        m(torch.randn(2, 3, 3, 8), torch.randn(2, 4, 8))
