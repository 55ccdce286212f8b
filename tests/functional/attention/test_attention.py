"""Boundary checks and masked-row behaviour of mmfuse.functional.attention.masked_attention."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import masked_attention

Q, K, V = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 6)


def test_all_masked_rows_are_zero_with_finite_gradients() -> None:
    q = Q.clone().requires_grad_()
    none = torch.zeros(2, 5, dtype=torch.bool)
    out, w = masked_attention(q, K, V, none, need_weights=True)
    assert w is not None and not out.any() and not w.any()
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_shape_dtype_and_device_errors() -> None:
    with pytest.raises(ShapeError, match=r"^masked_attention: expected `q` of shape \(B, h, L, d\), "
                       r"got \(2, 3, 4\)\.$"):
        masked_attention(Q[0], K[0], V[0])
    with pytest.raises(ShapeError, match=r"^masked_attention: expected `k` of shape \(B, h, N, d\) "
                       r"with B=2, h=2, d=4, got \(2, 2, 5, 3\)\.$"):
        masked_attention(Q, torch.randn(2, 2, 5, 3), V)
    with pytest.raises(ShapeError, match=r"expected `v` of shape \(B, h, N, e\) with B=2, h=2, N=5"):
        masked_attention(Q, K, V[:, :, :4])
    with pytest.raises(TypeError, match="^masked_attention: expected `q` to be a floating-point"):
        masked_attention(Q.long(), K.long(), V.long())
    with pytest.raises(TypeError, match="^masked_attention: expected `key_mask` to be a torch.bool"):
        masked_attention(Q, K, V, torch.ones(2, 5))
    with pytest.raises(ShapeError, match=r"^masked_attention: expected `key_mask` of shape \(B, N\) "
                       r"with B=2, N=5, got \(2, 4\)\.$"):
        masked_attention(Q, K, V, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"^masked_attention: expected `query_mask` of shape \(B, L\) "
                       r"with B=2, L=3, got \(2, 5\)\.$"):
        masked_attention(Q, K, V, query_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="^masked_attention: expected `key_mask` on cpu like the "
                       "inputs, got meta"):
        masked_attention(Q, K, V, torch.ones(2, 5, dtype=torch.bool, device="meta"))


def test_sinusoidal_encoding_3d_checks_dim_and_dtype() -> None:
    from mmfuse.functional import sinusoidal_encoding_3d

    with pytest.raises(ValueError, match=r"^sinusoidal_encoding_3d: expected `dim` to be a positive int, got 0\.$"):
        sinusoidal_encoding_3d(2, 3, 4, 0)
    with pytest.raises(TypeError, match=r"^sinusoidal_encoding_3d: expected a floating `dtype`, got torch\.int64\.$"):
        sinusoidal_encoding_3d(2, 3, 4, 12, dtype=torch.long)


def test_graph_attention_checks_its_inputs_and_masked_nodes_are_zero() -> None:
    from mmfuse.functional import graph_attention

    x, s = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5)
    gone = torch.tensor([[True, True, False, True, True], [False] * 5])
    out, w = graph_attention(x, s, s, node_mask=gone, need_weights=True)
    assert w is not None and torch.isfinite(out).all() and torch.isfinite(w).all()
    assert not out[1].any() and not out[0, :, 2].any()
    with pytest.raises(ShapeError, match=r"^graph_attention: expected `score_dst` of shape \(B, h, K\) "
                       r"with B=2, h=2, K=5, got \(2, 2, 4\)\.$"):
        graph_attention(x, s, s[..., :4])
    with pytest.raises(TypeError, match="^graph_attention: expected `adjacency` to be a torch.bool"):
        graph_attention(x, s, s, torch.ones(5, 5))
    with pytest.raises(ShapeError, match=r"^graph_attention: expected `adjacency` of shape \(B, K, J\) "
                       r"with B=2, K=5, J=5, got \(2, 5, 4\)\.$"):
        graph_attention(x, s, s, torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"^graph_attention: expected `node_mask` of shape \(B, K\) "
                       r"with B=2, K=5, got \(2, 4\)\.$"):
        graph_attention(x, s, s, node_mask=torch.ones(2, 4, dtype=torch.bool))


def test_divided_attention_checks_its_inputs() -> None:
    from mmfuse.functional import divided_attention

    b, h, n_q, t, p, d = 2, 2, 3, 4, 5, 6
    qt, qs = torch.randn(b, h, n_q, d), torch.randn(b, h, n_q, d)
    kt, ks, v = torch.randn(b, h, t, p, d), torch.randn(b, h, t, p, d), torch.randn(b, h, t, p, 7)
    with pytest.raises(ShapeError, match=r"^divided_attention: expected `k_time` of shape "
                       r"\(B, h, T, P, d\) with B=2, h=2, d=6, got \(2, 2, 4, 6\)\.$"):
        divided_attention(qt, kt[:, :, :, 0], qs, ks, v)
    with pytest.raises(ShapeError, match=r"^divided_attention: expected `k_space` of shape "
                       r"\(B, h, T, P, d\) with B=2, h=2, T=4, P=5, d=6, got \(2, 2, 4, 3, 6\)\.$"):
        divided_attention(qt, kt, qs, ks[:, :, :, :3], v)
    with pytest.raises(ShapeError, match=r"^divided_attention: expected `q_space` of shape "
                       r"\(B, h, L, d\) with B=2, h=2, L=3, d=6, got \(2, 2, 3, 5\)\.$"):
        divided_attention(qt, kt, qs[..., :5], ks, v)
    with pytest.raises(ShapeError, match=r"^divided_attention: expected `v` of shape "
                       r"\(B, h, T, P, e\) with B=2, h=2, T=4, P=5, got \(2, 2, 3, 5, 7\)\.$"):
        divided_attention(qt, kt, qs, ks, v[:, :, :3])
    with pytest.raises(ShapeError, match=r"^divided_attention: expected `key_mask` of shape "
                       r"\(B, T, P\) with B=2, T=4, P=5, got \(2, 20\)\.$"):
        divided_attention(qt, kt, qs, ks, v, torch.ones(b, t * p, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^divided_attention: expected `query_mask` to be a "
                       r"torch.bool tensor"):
        divided_attention(qt, kt, qs, ks, v, None, torch.ones(b, n_q))
    with pytest.raises(ValueError, match=r"^divided_attention: expected `dropout_p` in \[0, 1\), "
                       r"got 1\.0\.$"):
        divided_attention(qt, kt, qs, ks, v, dropout_p=1.0)
    with pytest.raises(ValueError, match=r"^divided_attention: expected `v` on cpu like "
                       r"`q_time`, got meta\.$"):
        divided_attention(qt, kt, qs, ks, v.to("meta"))
    out, w = divided_attention(qt, kt, qs, ks, v, need_weights=True)
    assert out.shape == (b, h, n_q, 7) and w is not None
    torch.testing.assert_close(w.sum(dim=(-2, -1)), torch.ones(b, h, n_q))


def test_mixed_dtypes_and_devices_are_named_before_sdpa() -> None:
    from mmfuse.functional import masked_attention, masked_cross_attention

    q, k = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    keep = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"^masked_attention: expected `k` of dtype torch.float32 "
                       r"on cpu like `q`, got torch.float64 on cpu\.$"):
        masked_attention(q, k.double(), k)
    with pytest.raises(ValueError, match=r"^masked_attention: expected `v` of dtype torch.float32 "
                       r"on cpu like `q`, got torch.float32 on meta\.$"):
        masked_attention(q, k, k.to("meta"))
    with pytest.raises(TypeError, match=r"^masked_cross_attention: expected `value` of dtype "
                       r"torch.float32 on cpu like `query`, got torch.bfloat16 on cpu\.$"):
        masked_cross_attention(q, k, k.bfloat16(), keep)
