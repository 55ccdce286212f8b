"""Boundary checks and empty-row behaviour of mmfuse.functional.attention.cross."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import masked_cross_attention, masked_mean


def test_masked_mean_matches_a_loop_and_is_zero_for_empty_rows() -> None:
    x = torch.randn(3, 5, 4, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0] * 5, [1] * 5], dtype=torch.bool)
    out = masked_mean(x, mask)
    for i in range(3):
        kept = [x[i, j] for j in range(5) if mask[i, j]]
        want = torch.stack(kept).mean(0) if kept else torch.zeros(4)
        torch.testing.assert_close(out[i], want)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and not x.grad[1].any()


def test_masked_mean_errors() -> None:
    x = torch.randn(2, 5, 4)
    with pytest.raises(TypeError, match="^masked_mean: expected `mask` to be a torch.bool tensor"):
        masked_mean(x, torch.ones(2, 5))
    with pytest.raises(ShapeError, match=r"^masked_mean: expected `mask` of shape \(B, N\) with "
                       r"B=2, N=5, got \(2, 4\)\.$"):
        masked_mean(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"^masked_mean: expected `x` of shape \(B, N, D\)"):
        masked_mean(x[0], torch.ones(2, 5, dtype=torch.bool))


def test_masked_cross_attention_errors_and_empty_rows() -> None:
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 6)
    none = torch.zeros(2, 5, dtype=torch.bool)
    assert not masked_cross_attention(q, k, v, none).any()
    with pytest.raises(ShapeError, match=r"^masked_cross_attention: expected `key_mask` of shape "
                       r"\(B, N\) with B=2, N=5, got \(2, 4\)\.$"):
        masked_cross_attention(q, k, v, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="^masked_cross_attention: expected `key_mask` to be a torch.bool"):
        masked_cross_attention(q, k, v, torch.ones(2, 5))
    with pytest.raises(ShapeError, match=r"^masked_cross_attention: expected `key` of shape "
                       r"\(B, H, N, d\) with B=2, H=2, d=4, got \(2, 2, 5, 3\)\.$"):
        masked_cross_attention(q, torch.randn(2, 2, 5, 3), v, none)
    with pytest.raises(ValueError, match="^masked_cross_attention: expected `key_mask` on cpu"):
        masked_cross_attention(q, k, v, none.to("meta"))
