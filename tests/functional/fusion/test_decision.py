"""Boundary checks of mmfuse.functional.fusion.decision.decision_fusion (the fusion math itself is
tested through DecisionFusion in tests/fusion/test_decision_level.py)."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional.fusion.decision import decision_fusion
from mmfuse.fusion import DecisionFusion

B, M, C = 4, 3, 5


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(torch.randn(B, M, C), dim=-1)
    return probs, torch.ones(B, M, dtype=torch.bool)


def test_bad_predictions_and_observed() -> None:
    probs, obs = _inputs()
    with pytest.raises(ShapeError, match=r"^decision_fusion: expected `predictions` of shape "
                       r"\(B, M, C\), got \(4, 5\)\.$"):
        decision_fusion(probs[:, 0], obs)
    with pytest.raises(TypeError, match="decision_fusion: expected `predictions` to be a "
                       "floating-point tensor, got torch.int64"):
        decision_fusion(probs.long(), obs)
    with pytest.raises(TypeError, match="decision_fusion: expected `observed` to be a torch.bool"):
        decision_fusion(probs, obs.float())
    with pytest.raises(ShapeError, match=r"decision_fusion: expected `observed` of shape \(B, M\) "
                       r"with B=4, M=3, got \(4, 2\)"):
        decision_fusion(probs, obs[:, :2])


def test_bad_weights_and_temperature() -> None:
    probs, obs = _inputs()
    with pytest.raises(ShapeError, match=r"decision_fusion: expected `weights` of shape \(M,\) "
                       r"with M=3, got \(2,\)"):
        decision_fusion(probs, obs, torch.ones(2))
    with pytest.raises(ShapeError, match=r"expected `weights` of shape \(B, M\) with B=4, M=3"):
        decision_fusion(probs, obs, torch.ones(2, 3))
    with pytest.raises(TypeError, match="expected `weights` to be a floating-point tensor"):
        decision_fusion(probs, obs, torch.ones(M, dtype=torch.long))
    with pytest.raises(TypeError, match="expected `weights` to be a tensor of shape"):
        decision_fusion(probs, obs, [1.0, 1.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"expected `temperature` of shape \(M,\) with M=3"):
        decision_fusion(probs, obs, inputs="logits", temperature=torch.ones(2))


def test_mixed_devices() -> None:
    probs, obs = _inputs()
    with pytest.raises(ValueError, match="decision_fusion: expected `observed` on cpu like "
                       "`predictions`, got meta"):
        decision_fusion(probs, obs.to("meta"))
    with pytest.raises(ValueError, match="expected `weights` on cpu like `predictions`, got meta"):
        decision_fusion(probs, obs, torch.ones(M, device="meta"))


def test_decide_checks_its_input() -> None:
    probs = torch.softmax(torch.randn(B, C), dim=-1)
    assert torch.equal(DecisionFusion.decide(probs), probs.argmax(dim=-1))
    with pytest.raises(ShapeError, match=r"^DecisionFusion.decide: expected `probs` of shape "
                       r"\(B, C\), got \(5,\)\.$"):
        DecisionFusion.decide(probs[0])
    with pytest.raises(TypeError, match="DecisionFusion.decide: expected `probs` to be a tensor"):
        DecisionFusion.decide([0.1, 0.9])  # type: ignore[arg-type]


def test_nan_config_values_are_refused() -> None:
    with pytest.raises(ValueError, match=r"DecisionFusion: expected `weights\['a'\]` to be a "
                       "positive number, got nan"):
        DecisionFusion(["a", "b"], 2, weights={"a": float("nan"), "b": 1.0})
    with pytest.raises(ValueError, match=r"expected `temperature\['a'\]` to be a positive number"):
        DecisionFusion(["a", "b"], 2, inputs="logits", temperature=float("nan"))


def _single_strategies() -> list[tuple[str, str, object]]:
    from mmfuse.functional.fusion import decision as d

    return [("weighted_mean", "probs", d.weighted_mean), ("soft_vote", "probs", d.soft_vote),
            ("product_of_experts", "log_probs", d.product_of_experts),
            ("hard_vote", "probs", d.hard_vote), ("max_fusion", "probs", d.max_fusion)]


@pytest.mark.parametrize("name,arg,fn", _single_strategies())
def test_single_strategies_check_their_inputs(name: str, arg: str, fn) -> None:  # type: ignore[no-untyped-def]
    probs, obs = _inputs()
    w = torch.ones(M)
    extra = () if name in ("soft_vote", "max_fusion") else (w,)
    with pytest.raises(ShapeError, match=rf"^{name}: expected `{arg}` of shape \(B, M, C\), "
                       r"got \(4, 5\)\.$"):
        fn(probs[:, 0], obs, *extra)
    with pytest.raises(ShapeError, match=rf"^{name}: expected `observed` of shape \(B, M\) "
                       r"with B=4, M=3, got \(4, 2\)\.$"):
        fn(probs, obs[:, :2], *extra)
    with pytest.raises(TypeError, match=rf"^{name}: expected `observed` to be a torch.bool"):
        fn(probs, obs.float(), *extra)
    if extra:
        with pytest.raises(ShapeError, match=rf"^{name}: expected `weights` of shape \(M,\) "
                           r"with M=3, got \(2,\)\.$"):
            fn(probs, obs, torch.ones(2))
        with pytest.raises(TypeError, match=rf"^{name}: expected `weights` to be a tensor of "
                           r"shape \(M,\) with M=3, got NoneType\.$"):
            fn(probs, obs, None)
    # valid inputs still give a distribution per row
    torch.testing.assert_close(fn(probs, obs, *extra).sum(-1), torch.ones(B))


def test_single_strategy_device_mismatch_is_named() -> None:
    from mmfuse.functional.fusion.decision import weighted_mean

    probs, obs = _inputs()
    with pytest.raises(ValueError, match=r"^weighted_mean: expected `weights` on cpu like "
                       r"`probs`, got meta\.$"):
        weighted_mean(probs, obs, torch.ones(M, device="meta"))
