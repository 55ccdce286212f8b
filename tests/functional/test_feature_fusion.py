"""Boundary checks and empty-row behaviour of mmfuse.functional.feature_fusion."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import attention_fusion, film, gated_fusion, tensor_fusion

B, M, D = 4, 3, 6


def test_nothing_observed_gives_missing_with_finite_gradients() -> None:
    values = torch.randn(B, M, D, requires_grad=True)
    scores = torch.randn(B, M, requires_grad=True)
    none = torch.zeros(B, M, dtype=torch.bool)
    missing = torch.arange(float(D))
    fused, weights = attention_fusion(values, scores, none, missing)
    gated = gated_fusion(values, torch.randn(B, M, D), none, missing)
    torch.testing.assert_close(fused, missing.expand(B, D))
    torch.testing.assert_close(gated, missing.expand(B, D))
    assert not weights.any()
    (fused.sum() + weights.sum()).backward()
    assert values.grad is not None and scores.grad is not None
    assert torch.isfinite(values.grad).all() and torch.isfinite(scores.grad).all()


def test_attention_and_gated_fusion_errors() -> None:
    values, obs, missing = torch.randn(B, M, D), torch.ones(B, M, dtype=torch.bool), torch.zeros(D)
    with pytest.raises(ShapeError, match=r"^attention_fusion: expected `scores` of shape \(B, M\) "
                       r"with B=4, M=3, got \(4, 2\)\.$"):
        attention_fusion(values, torch.randn(B, 2), obs, missing)
    with pytest.raises(TypeError, match="^attention_fusion: expected `observed` to be a torch.bool"):
        attention_fusion(values, torch.randn(B, M), obs.float(), missing)
    with pytest.raises(ShapeError, match=r"^attention_fusion: expected `missing` of shape \(D,\) "
                       r"with D=6, got \(5,\)\.$"):
        attention_fusion(values, torch.randn(B, M), obs, torch.zeros(5))
    with pytest.raises(ShapeError, match=r"^gated_fusion: expected `gate_logits` of shape "
                       r"\(B, M, D\) with B=4, M=3, D=6, got \(4, 3, 5\)\.$"):
        gated_fusion(values, torch.randn(B, M, 5), obs, missing)
    with pytest.raises(ValueError, match="^gated_fusion: expected `observed` on cpu like the inputs"):
        gated_fusion(values, torch.randn(B, M, D), obs.to("meta"), missing)


def test_film_and_tensor_fusion_errors() -> None:
    x = torch.randn(B, D)
    with pytest.raises(ShapeError, match=r"^film: expected `gamma` of shape \(B, D\) with B=4, D=6, "
                       r"got \(4, 5\)\.$"):
        film(x, torch.randn(B, 5), torch.randn(B, D))
    with pytest.raises(TypeError, match=r"^tensor_fusion: expected `zs` to be a non-empty sequence "
                       r"of \(B, D_m\) tensors, got \[\]\.$"):
        tensor_fusion([])
    with pytest.raises(ShapeError, match=r"^tensor_fusion: expected `zs\[1\]` of shape \(B, D\) with "
                       r"B=4, got \(3, 2\)\.$"):
        tensor_fusion([x, torch.randn(3, 2)])
    assert tensor_fusion([x, torch.randn(B, 2)]).shape == (B, (D + 1) * 3)


def test_masked_softmax_needs_a_bool_mask_and_is_zero_for_empty_rows() -> None:
    from mmfuse.functional import masked_softmax

    scores = torch.randn(2, 3)
    obs = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_softmax(scores, obs)
    torch.testing.assert_close(out[0, [0, 2]], torch.softmax(scores[0, [0, 2]], dim=0))
    assert not out[0, 1] and not out[1].any()
    with pytest.raises(TypeError, match=r"^masked_softmax: expected `observed` to be a torch.bool "
                       r"tensor \(True = observed\), got torch.float32\.$"):
        masked_softmax(scores, obs.float())
