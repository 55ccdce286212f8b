"""FactorizedSpatioTemporalAttention against a naive float64 loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import ShapeError
from mmfuse.alignment import FactorizedSpatioTemporalAttention, SpatioTemporalAttention


def softmax_kept(scores: list[float], keep: list[bool]) -> torch.Tensor:
    s = torch.tensor([x if k else -math.inf for x, k in zip(scores, keep)], dtype=torch.float64)
    e = torch.exp(s - s.max())
    return e / e.sum()


def naive_reference(m: FactorizedSpatioTemporalAttention, video, text, key_mask=None,
                    text_mask=None):
    """Loops: per (sample, head, query, position) softmax over kept frames, then per (sample,
    head, query) softmax over positions with a kept frame. Returns (B, L, D), (B, h, L, T, P)."""
    sd = {k: v.detach().double() for k, v in m.state_dict().items()}
    video, text = video.double(), text.double()
    b, t, h, w, dv = video.shape
    p, nl, dm = h * w, text.shape[1], m.dim
    x = video.reshape(b, t, p, dv)

    def lin(name, inp):
        return inp @ sd[name + ".weight"].T + sd[name + ".bias"]

    qt, qs = lin("q_time", text), lin("q_space", text)
    kt, ks, v = lin("k_time", x), lin("k_space", x), lin("v_proj", x)
    heads, hd = m.num_heads, dm // m.num_heads
    keep = torch.ones(b, t, p, dtype=torch.bool) if key_mask is None else key_mask.reshape(b, t, p)
    mixed = torch.zeros(b, nl, dm, dtype=torch.float64)
    maps = torch.zeros(b, heads, nl, t, p, dtype=torch.float64)
    valid = torch.zeros(b, nl, dtype=torch.bool)
    for i in range(b):
        pos_ok = [bool(keep[i, :, r].any()) for r in range(p)]
        for j in range(nl):
            if not any(pos_ok) or (text_mask is not None and not text_mask[i, j]):
                continue
            valid[i, j] = True
            for a in range(heads):
                sl = slice(a * hd, (a + 1) * hd)
                z = torch.zeros(p, hd, dtype=torch.float64)
                kappa = torch.zeros(p, hd, dtype=torch.float64)
                a_time = torch.zeros(t, p, dtype=torch.float64)
                for r in range(p):
                    if not pos_ok[r]:
                        continue
                    s = [float(qt[i, j, sl] @ kt[i, f, r, sl]) / math.sqrt(hd) for f in range(t)]
                    a_time[:, r] = softmax_kept(s, keep[i, :, r].tolist())
                    z[r] = a_time[:, r] @ v[i, :, r, sl]
                    kappa[r] = a_time[:, r] @ ks[i, :, r, sl]
                s2 = [float(qs[i, j, sl] @ kappa[r]) / math.sqrt(hd) for r in range(p)]
                a_space = softmax_kept(s2, pos_ok)
                mixed[i, j, sl] = a_space @ z
                maps[i, a, j] = a_time * a_space[None, :]
    out = lin("out_proj", mixed)
    return out * valid[..., None], maps


def make(b=2, t=3, h=2, w=2, dv=6, nl=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, h, w, dv, generator=g, dtype=torch.float64),
            torch.randn(b, nl, d, generator=g, dtype=torch.float64))


def test_matches_naive_reference_with_masks():
    torch.manual_seed(0)
    m = FactorizedSpatioTemporalAttention(8, 2, video_dim=6).double()
    video, text = make(b=3)
    g = torch.Generator().manual_seed(1)
    key_mask = torch.rand(3, 3, 2, 2, generator=g) > 0.5
    key_mask[0, :, 0, 0] = False  # one position with no kept frame
    key_mask[2] = False  # nothing kept
    text_mask = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    for km, tm in ((None, None), (key_mask, text_mask)):
        want, maps = naive_reference(m, video, text, km, tm)
        res = m(video, text, video_mask=km, text_mask=tm, return_attention=True)
        torch.testing.assert_close(res.output, want)
        torch.testing.assert_close(res.attention.flatten(4), maps)
        torch.testing.assert_close(m(video, text, video_mask=km, text_mask=tm), want)
    sums = res.attention.sum(dim=(-3, -2, -1))
    valid = text_mask & key_mask.flatten(1).any(1)[:, None]
    torch.testing.assert_close(sums, valid[:, None].expand_as(sums).double())
    assert bool((res.attention[~key_mask[:, None, None].expand_as(res.attention)] == 0).all())


def test_single_frame_equals_joint_attention():
    """With T=1 the time stage is the identity: the space stage is joint attention with the
    space query/key projections."""
    torch.manual_seed(1)
    f = FactorizedSpatioTemporalAttention(8, 2, video_dim=6).double()
    j = SpatioTemporalAttention(8, 2, video_dim=6).double()
    j.q_proj.load_state_dict(f.q_space.state_dict())
    j.k_proj.load_state_dict(f.k_space.state_dict())
    j.v_proj.load_state_dict(f.v_proj.state_dict())
    j.out_proj.load_state_dict(f.out_proj.state_dict())
    video, text = make(t=1, h=3, w=3)
    torch.testing.assert_close(f(video, text), j(video, text))


def test_masked_values_change_nothing_and_all_masked_is_zero():
    torch.manual_seed(2)
    m = FactorizedSpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="sinusoidal").eval()
    video, text = (x.float() for x in make(b=3))
    frames = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    noisy = video.where(frames[:, :, None, None, None], torch.full_like(video, float("nan")))
    a = m(video, text, video_mask=frames, return_attention=True)
    b = m(noisy, text, video_mask=frames, return_attention=True)
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.attention, b.attention)
    assert bool((a.output[1] == 0).all()) and bool(torch.isfinite(a.output).all())
    torch.testing.assert_close(a.output[0], m(video[0, :2], text[0]))  # padding = absent


def test_batched_equals_unbatched_and_gradients():
    torch.manual_seed(3)
    m = FactorizedSpatioTemporalAttention(8, 2, video_dim=6, pos_encoding="learned")
    video, text = (x.float() for x in make(b=2))
    mask = torch.rand(2, 3, 2, 2) > 0.3
    full = m(video, text, video_mask=mask, return_attention=True)
    for i in range(2):
        one = m(video[i], text[i], video_mask=mask[i], return_attention=True)
        torch.testing.assert_close(one.output, full.output[i])
        torch.testing.assert_close(one.attention, full.attention[i])
    full.output.pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_gradcheck_float64():
    torch.manual_seed(4)
    m = FactorizedSpatioTemporalAttention(4, 2, video_dim=3).double()
    video = torch.randn(1, 2, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    text = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[[[True], [False]], [[True], [True]]]])
    assert torch.autograd.gradcheck(lambda v, t: m(v, t, video_mask=mask), (video, text))


def test_errors():
    m = FactorizedSpatioTemporalAttention(8, 2, video_dim=6)
    video, text = (x.float() for x in make())
    with pytest.raises(ShapeError, match=r"FactorizedSpatioTemporalAttention: expected `video` "
                       r"of shape \(B, T, H, W, Dv\) with Dv=6, got \(2, 3, 2, 2, 7\)"):
        m(torch.cat([video, video[..., :1]], -1), text)
    with pytest.raises(ValueError, match=r"expected `num_heads` to divide dim=8, got 3"):
        FactorizedSpatioTemporalAttention(8, 3)
    with pytest.raises(ValueError, match=r"FactorizedSpatioTemporalAttention: expected `dropout` "
                       r"in \[0, 1\), got -0\.1\."):
        FactorizedSpatioTemporalAttention(8, 2, dropout=-0.1)
    with pytest.raises(ValueError, match=r"unknown `pos_encoding` 'rope'; expected one of"):
        FactorizedSpatioTemporalAttention(8, 2, pos_encoding="rope")
    with pytest.raises(ValueError, match=r"expected `video_dim` to be a positive int"):
        FactorizedSpatioTemporalAttention(8, 2, video_dim=0)


@settings(max_examples=6, deadline=None)
@given(b=st.integers(1, 2), t=st.integers(1, 3), h=st.integers(1, 2), w=st.integers(1, 3),
       nl=st.integers(1, 3), seed=st.integers(0, 1000))
def test_property_matches_reference_over_sizes(b, t, h, w, nl, seed):
    torch.manual_seed(seed)
    m = FactorizedSpatioTemporalAttention(4, 2, video_dim=3).double()
    video, text = make(b=b, t=t, h=h, w=w, dv=3, nl=nl, d=4, seed=seed)
    mask = torch.rand(b, t, h, w, generator=torch.Generator().manual_seed(seed)) > 0.3
    want, maps = naive_reference(m, video, text, mask)
    res = m(video, text, video_mask=mask, return_attention=True)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention.flatten(4), maps)
