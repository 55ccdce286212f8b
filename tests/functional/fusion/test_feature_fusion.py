"""Boundary checks and empty-row behaviour of mmfuse.functional.fusion.feature."""

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


def test_masked_softmax_checks_shapes_and_dtypes() -> None:
    from mmfuse.functional import masked_softmax

    scores = torch.randn(2, 3)
    with pytest.raises(ShapeError, match=r"^masked_softmax: expected `observed` broadcastable to "
                       r"`scores` of shape \(2, 3\), got \(2, 4\)\.$"):
        masked_softmax(scores, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"^masked_softmax: expected `observed` broadcastable to "
                       r"`scores` of shape \(2, 3\), got \(1, 2, 3\)\.$"):
        masked_softmax(scores, torch.ones(1, 2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^masked_softmax: expected `scores` to be a "
                       r"floating-point tensor, got torch.int64\.$"):
        masked_softmax(scores.long(), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^masked_softmax: expected `dim` in \[-2, 2\) for "
                       r"`scores` of 2 dimensions, got 2\.$"):
        masked_softmax(scores, torch.ones(2, 3, dtype=torch.bool), dim=2)
    # a broadcastable mask is still accepted and equals the expanded one
    col = torch.tensor([[True], [False]])
    torch.testing.assert_close(masked_softmax(scores, col), masked_softmax(scores, col.expand(2, 3)))


def test_bilinear_pool_checks_projections_mask_and_rank() -> None:
    from mmfuse.functional import bilinear_pool

    ps = [torch.randn(4, 6), torch.randn(4, 6)]
    obs = torch.ones(4, 2, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"^bilinear_pool: expected `projections\[1\]` of shape "
                       r"\(B, D\) with B=4, D=6, got \(4, 5\)\.$"):
        bilinear_pool([ps[0], torch.randn(4, 5)], obs, 2)
    with pytest.raises(ShapeError, match=r"^bilinear_pool: expected `observed` of shape \(B, M\) "
                       r"with B=4, M=2, got \(4, 3\)\.$"):
        bilinear_pool(ps, torch.ones(4, 3, dtype=torch.bool), 2)
    with pytest.raises(TypeError, match=r"^bilinear_pool: expected `observed` to be a torch.bool"):
        bilinear_pool(ps, obs.float(), 2)
    with pytest.raises(ValueError, match=r"^bilinear_pool: expected `rank` to divide the "
                       r"projection size 6 \(O \* rank\), got 4\.$"):
        bilinear_pool(ps, obs, 4)
    with pytest.raises(TypeError, match=r"^bilinear_pool: expected `rank` to be a positive int, "
                       r"got 2\.0\.$"):
        bilinear_pool(ps, obs, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^bilinear_pool: expected `dropout_p` in \[0, 1\), "
                       r"got 1\.5\.$"):
        bilinear_pool(ps, obs, 2, dropout_p=1.5)
    with pytest.raises(TypeError, match=r"^bilinear_pool: expected `projections` to be a "
                       r"non-empty sequence of \(B, D_m\) tensors, got \[\]\.$"):
        bilinear_pool([], None, 2)
    assert bilinear_pool(ps, obs, 3).shape == (4, 2)


def test_low_rank_tensor_fusion_checks_factor_shapes() -> None:
    from mmfuse.functional import low_rank_tensor_fusion

    zs = [torch.randn(4, 3), torch.randn(4, 2)]
    factors = [torch.randn(5, 4, 7), torch.randn(5, 3, 7)]
    w, bias = torch.randn(5), torch.randn(7)
    with pytest.raises(ShapeError, match=r"^low_rank_tensor_fusion: expected `factors\[1\]` of "
                       r"shape \(R, I, O\) with R=5, I=3, O=7, got \(5, 4, 7\)\.$"):
        low_rank_tensor_fusion(zs, [factors[0], torch.randn(5, 4, 7)], w, bias)
    with pytest.raises(TypeError, match=r"^low_rank_tensor_fusion: expected `factors` to be a "
                       r"sequence of 2 \(R, D_m \+ 1, O\) tensors \(one per entry of `zs`\), "
                       r"got 1\.$"):
        low_rank_tensor_fusion(zs, factors[:1], w, bias)
    with pytest.raises(ShapeError, match=r"^low_rank_tensor_fusion: expected `weights` of shape "
                       r"\(R,\) with R=5, got \(4,\)\.$"):
        low_rank_tensor_fusion(zs, factors, torch.randn(4), bias)
    with pytest.raises(ShapeError, match=r"^low_rank_tensor_fusion: expected `bias` of shape "
                       r"\(O,\) with O=7, got \(6,\)\.$"):
        low_rank_tensor_fusion(zs, factors, w, torch.randn(6))
    with pytest.raises(ShapeError, match=r"^low_rank_tensor_fusion: expected `zs\[1\]` of shape "
                       r"\(B, D\) with B=4, got \(3, 2\)\.$"):
        low_rank_tensor_fusion([zs[0], torch.randn(3, 2)], factors, w, bias)
    assert low_rank_tensor_fusion(zs, factors, w, bias).shape == (4, 7)


def test_device_mismatches_are_named() -> None:
    from mmfuse.functional import bilinear_pool, low_rank_tensor_fusion, masked_softmax

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"^masked_softmax: expected `observed` on cpu like "
                       r"`scores`, got meta\.$"):
        masked_softmax(x, torch.ones(4, 3, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match=r"^bilinear_pool: expected `projections\[1\]` on cpu "
                       r"like `projections\[0\]`, got meta\.$"):
        bilinear_pool([x, x.to("meta")], None, 3)
    with pytest.raises(ValueError, match=r"^low_rank_tensor_fusion: expected `bias` on cpu like "
                       r"`zs\[0\]`, got meta\.$"):
        low_rank_tensor_fusion([x], [torch.randn(2, 4, 5)], torch.randn(2),
                               torch.randn(5, device="meta"))


def test_signed_sqrt_names_a_non_tensor() -> None:
    from mmfuse.functional import signed_sqrt

    with pytest.raises(TypeError, match=r"^signed_sqrt: expected `x` to be a floating-point "
                       r"tensor, got list\.$"):
        signed_sqrt([1.0, 2.0])  # type: ignore[arg-type]
