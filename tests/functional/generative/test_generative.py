"""Boundary checks of mmfuse.functional.generative (the math itself is tested in
tests/alignment/generative/test_functional_generative.py)."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional.generative import (
    classifier_free_guidance,
    ddim_step,
    linear_beta_schedule,
    q_sample,
    reparameterize,
    v_target,
)

B, D = 4, 3


def test_linear_beta_schedule_refuses_betas_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"^linear_beta_schedule: expected `beta_start` in "
                       r"\(0, 1\), got 0\.0\.$"):
        linear_beta_schedule(10, beta_start=0.0)
    with pytest.raises(ValueError, match=r"^linear_beta_schedule: expected `beta_end` in "
                       r"\(0, 1\), got 1\.5\.$"):
        linear_beta_schedule(10, beta_end=1.5)
    with pytest.raises(ValueError, match=r"^linear_beta_schedule: expected `beta_start` <= "
                       r"`beta_end`, got beta_start=0\.02, beta_end=0\.0001\.$"):
        linear_beta_schedule(10, beta_start=0.02, beta_end=1e-4)
    assert linear_beta_schedule(10, beta_start=0.01, beta_end=0.01).shape == (10,)


@pytest.mark.parametrize("fn", [q_sample, v_target])
def test_q_sample_and_v_target_check_shapes(fn) -> None:  # type: ignore[no-untyped-def]
    name = fn.__name__
    x0, noise = torch.randn(B, D), torch.randn(B, D)
    with pytest.raises(ShapeError, match=rf"^{name}: expected `noise` of shape \(4, 3\) like "
                       r"`x0`, got \(4, 2\)\.$"):
        fn(x0, noise[:, :2], 0.5)
    with pytest.raises(ShapeError, match=rf"^{name}: expected `alpha_bar` of shape \(B,\) with "
                       r"B=4, got \(3,\)\.$"):
        fn(x0, noise, torch.rand(3))
    with pytest.raises(TypeError, match=rf"^{name}: expected `x0` to be a floating-point "
                       r"tensor, got torch.int64\.$"):
        fn(x0.long(), noise, 0.5)
    with pytest.raises(TypeError, match=rf"^{name}: expected `alpha_bar` to be a tensor of "
                       r"shape \(B,\) with B=4, got str\.$"):
        fn(x0, noise, "0.5")
    # accepted forms: a number, a 0-d tensor, a (B,) tensor
    for ab in (0.5, torch.tensor(0.5), torch.full((B,), 0.5)):
        torch.testing.assert_close(fn(x0, noise, ab), fn(x0, noise, 0.5))


def test_ddim_step_checks_shapes_and_eta() -> None:
    x0, eps = torch.randn(B, D), torch.randn(B, D)
    with pytest.raises(ShapeError, match=r"^ddim_step: expected `eps` of shape \(4, 3\) like "
                       r"`x0`, got \(3, 3\)\.$"):
        ddim_step(x0, eps[:3], 0.5, 0.7)
    with pytest.raises(ShapeError, match=r"^ddim_step: expected `alpha_bar_prev` of shape "
                       r"\(B,\) with B=4, got \(4, 1\)\.$"):
        ddim_step(x0, eps, 0.5, torch.rand(B, 1))
    with pytest.raises(ValueError, match=r"^ddim_step: expected `eta` to be a non-negative "
                       r"number, got -1\.0\.$"):
        ddim_step(x0, eps, 0.5, 0.7, eta=-1.0)
    with pytest.raises(ShapeError, match=r"^ddim_step: expected `noise` of shape \(4, 3\) like "
                       r"`x0`, got \(4, 3, 1\)\.$"):
        ddim_step(x0, eps, 0.5, 0.7, eta=1.0, noise=torch.randn(B, D, 1))


def test_classifier_free_guidance_checks_shapes() -> None:
    c = torch.randn(B, D)
    with pytest.raises(ShapeError, match=r"^classifier_free_guidance: expected `uncond_out` of "
                       r"shape \(4, 3\) like `cond_out`, got \(4, 1\)\.$"):
        classifier_free_guidance(c, torch.randn(B, 1), 2.0)
    with pytest.raises(TypeError, match=r"^classifier_free_guidance: expected `cond_out` to be "
                       r"a tensor of shape \(B, \.\.\.\), got list\.$"):
        classifier_free_guidance([1.0], c, 2.0)  # type: ignore[arg-type]


def test_reparameterize_checks_shapes_and_dtypes() -> None:
    m = torch.randn(B, D)
    with pytest.raises(ShapeError, match=r"^reparameterize: expected `mean`, `logvar`, `noise` "
                       r"to broadcast together, got \(4, 3\), \(4,\), \(4, 3\)\.$"):
        reparameterize(m, torch.zeros(B), torch.randn(B, D))
    # broadcasting is allowed: one (D,) Gaussian, many draws
    out = reparameterize(m[0], torch.zeros(D), torch.randn(5, D))
    assert out.shape == (5, D)
    with pytest.raises(TypeError, match=r"^reparameterize: expected `noise` to be a "
                       r"floating-point tensor, got torch.bool\.$"):
        reparameterize(m, torch.zeros(B, D), torch.ones(B, D, dtype=torch.bool))


def test_device_mismatches_are_named() -> None:
    """A meta tensor stands in for another device (CPU-only test machines)."""
    x = torch.randn(B, D)
    with pytest.raises(ValueError, match=r"^q_sample: expected `noise` on cpu like `x0`, "
                       r"got meta\.$"):
        q_sample(x, x.to("meta"), 0.5)
    with pytest.raises(ValueError, match=r"^v_target: expected `alpha_bar` on cpu like `x0`, "
                       r"got meta\.$"):
        v_target(x, x, torch.rand(B, device="meta"))
    with pytest.raises(ValueError, match=r"^ddim_step: expected `noise` on cpu like `x0`, "
                       r"got meta\.$"):
        ddim_step(x, x, 0.5, 0.7, eta=1.0, noise=x.to("meta"))
    with pytest.raises(ValueError, match=r"^reparameterize: expected `logvar` on cpu like "
                       r"`mean`, got meta\.$"):
        reparameterize(x, x.to("meta"), x)


def test_q_sample_refuses_alpha_bar_outside_the_unit_interval() -> None:
    from mmfuse.functional import q_sample, v_target

    x, n = torch.randn(2, 3), torch.randn(2, 3)
    for bad in (1.5, 0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"^q_sample: expected `alpha_bar` in \(0, 1\], got "):
            q_sample(x, n, bad)
    with pytest.raises(ValueError, match=r"^v_target: expected `alpha_bar` in \(0, 1\], got -0\.5"):
        v_target(x, n, torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(q_sample(x, n, 1.0), x)
