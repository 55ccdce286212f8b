"""Schedules, DDPM variance types, x0 clipping / dynamic thresholding and DPM-Solver++(2M)
against the diffusers schedulers of the same name, step by step, and the diffusion head's
samplers against a diffusers loop around the same denoiser.

diffusers keeps its schedule and arithmetic in float32; mmfuse's schedules are float64.
Tolerances: betas 1e-8 absolute (measured 2e-9); a DDPM step 1e-5 relative to the sample's
scale (measured 3e-7 to 2e-6); a DPM-Solver++(2M) step and whole trajectory 1e-5 relative
(measured 3e-7); the head's 10-step samplers against diffusers 1e-4 relative.
"""

from __future__ import annotations

import math

import pytest
import torch

from _peers import PRED, ddpm_steps, dpm_solver_steps, random_head, scheduler_loop
from mmfuse.alignment import DiffusionHead
from mmfuse.functional import (
    alphas_cumprod,
    beta_schedule,
    ddpm_step,
    ddpm_variance,
    dpm_solver_2m_step,
    dynamic_threshold,
    linear_beta_schedule,
    scaled_linear_beta_schedule,
    sigmoid_beta_schedule,
)

diffusers = pytest.importorskip("diffusers")


def ddpm(**config):
    return diffusers.DDPMScheduler(**config)


def dpm(**config):
    return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                 solver_type="midpoint", **config)


@pytest.mark.parametrize("steps", [1000, 250, 37])
@pytest.mark.parametrize("kind, kw", [("linear", {}), ("scaled_linear", {"beta_start": 0.00085,
                                                                        "beta_end": 0.012}),
                                      ("sigmoid", {}), ("sigmoid", {"beta_start": 1e-3,
                                                                    "beta_end": 0.05})])
def test_schedules_match_diffusers(kind, kw, steps) -> None:
    want = ddpm(num_train_timesteps=steps, beta_schedule=kind, **kw).betas.double()
    got = beta_schedule(kind, steps, rescale=False, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-8)
    fn = {"linear": linear_beta_schedule, "scaled_linear": scaled_linear_beta_schedule,
          "sigmoid": sigmoid_beta_schedule}[kind]
    extra = {"rescale": False} if kind == "linear" else {}
    torch.testing.assert_close(fn(steps, **kw, **extra), got, rtol=0, atol=0)


def test_linear_rescaling_is_explicit() -> None:
    # identical at T=1000; at T=250 the rescaled betas are 4x diffusers' (default kept): the
    # last beta 0.08 instead of 0.02
    torch.testing.assert_close(linear_beta_schedule(1000), linear_beta_schedule(1000, rescale=False))
    torch.testing.assert_close(linear_beta_schedule(250), 4 * linear_beta_schedule(250, rescale=False))
    gap = (alphas_cumprod(linear_beta_schedule(250)) - alphas_cumprod(
        linear_beta_schedule(250, rescale=False))).abs().max()
    assert 0.4 < gap < 0.5  # the difference the option makes visible (0.475)
    head = DiffusionHead(4, 3, hidden_dim=8, num_blocks=1, num_steps=250, schedule="linear",
                         rescale_linear=False)
    torch.testing.assert_close(head.betas, linear_beta_schedule(250, rescale=False))
    assert "rescale_linear=False" in repr(head)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("x0_policy", [None, "clip", "threshold"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_steps_match_diffusers(variance_type, x0_policy, prediction) -> None:
    sched = ddpm(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.001,
                 beta_end=0.03, variance_type=variance_type, clip_sample=x0_policy == "clip",
                 clip_sample_range=1.0, thresholding=x0_policy == "threshold",
                 dynamic_thresholding_ratio=0.9, sample_max_value=2.5,
                 prediction_type=PRED[prediction])
    sched.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)
    for x0, want_x0, got, want in ddpm_steps(sched, x, g):  # mmfuse beside diffusers, per step
        torch.testing.assert_close(x0, want_x0, rtol=1e-5, atol=1e-5)
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)


def test_ddpm_variance_closed_forms() -> None:
    ab, abp = 0.3, 0.5
    beta = 1 - ab / abp
    small = beta * (1 - abp) / (1 - ab)
    assert ddpm_variance(ab, abp) == pytest.approx(small)
    assert ddpm_variance(ab, abp, "fixed_large") == pytest.approx(beta)
    ends = torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64)
    got = ddpm_variance(ab, abp, "learned_range", ends)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got[0], torch.tensor([small, beta, math.sqrt(small * beta)],
                                                    dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^ddpm_variance: expected `predicted` exactly when "
                       r"variance_type='learned_range', got variance_type='fixed_small'"):
        ddpm_variance(ab, abp, "fixed_small", ends)
    with pytest.raises(ValueError, match=r"^ddpm_variance: unknown `variance_type` 'learned'; "
                       r"expected one of \['fixed_small', 'fixed_large', 'learned_range'\]\.$"):
        ddpm_variance(ab, abp, "learned")


def test_dynamic_threshold_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [0.3, 1.0, 3.0, 9.0], dtype=torch.float64)[:, None, None]
    got = dynamic_threshold(x0, 0.8, max_value=4.0)
    for i in range(4):  # per sample: the quantile over all its values, clamped to [1, 4]
        flat = sorted(x0[i].abs().reshape(-1).tolist())
        pos = 0.8 * (len(flat) - 1)
        q = flat[int(pos)] + (pos - int(pos)) * (flat[int(pos) + 1] - flat[int(pos)])
        s = min(max(q, 1.0), 4.0)
        torch.testing.assert_close(got[i], x0[i].clamp(-s, s) / s)
    torch.testing.assert_close(dynamic_threshold(x0, 0.8, max_value=1.0), x0.clamp(-1, 1))
    assert dynamic_threshold(x0.bfloat16(), 0.9).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"^dynamic_threshold: expected `max_value` >= 1, got 0.5"):
        dynamic_threshold(x0, 0.9, 0.5)


@pytest.mark.parametrize("steps", [6, 20])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("threshold", [False, True])
def test_dpm_solver_2m_matches_diffusers_step_by_step(steps, prediction, threshold) -> None:
    sched = dpm(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                beta_end=0.012, prediction_type=PRED[prediction], thresholding=threshold,
                dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    sched.set_timesteps(steps)
    x = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(2))  # diffusers' threshold wants (B, C, ...)
    for got, want in dpm_solver_steps(sched, x):  # mmfuse beside diffusers, per step
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)


def test_dpm_solver_2m_first_step_is_ddim_and_batched_alphas() -> None:
    from mmfuse.functional import ddim_step

    g = torch.Generator().manual_seed(3)
    x, x0, x0_last = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3))
    ab, abp, ab_last = 0.3, 0.6, 0.1
    eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    torch.testing.assert_close(dpm_solver_2m_step(x, x0, ab, abp), ddim_step(x0, eps, ab, abp))
    assert torch.equal(dpm_solver_2m_step(x, x0, ab, 1.0, x0_last, ab_last), x0)
    rows = torch.tensor([0.3, 0.4, 0.5, 0.2], dtype=torch.float64)
    batched = dpm_solver_2m_step(x, x0, rows, rows + 0.3, x0_last, rows - 0.1)
    for i in range(4):
        one = dpm_solver_2m_step(x[i:i + 1], x0[i:i + 1], float(rows[i]), float(rows[i]) + 0.3,
                                 x0_last[i:i + 1], float(rows[i]) - 0.1)
        torch.testing.assert_close(batched[i:i + 1], one)
    with pytest.raises(ValueError, match=r"^dpm_solver_2m_step: expected `x0_last` and "
                       r"`alpha_bar_last` together or neither\.$"):
        dpm_solver_2m_step(x, x0, ab, abp, x0_last)


def _head(prediction: str) -> DiffusionHead:
    return random_head(prediction, seed=0)  # a non-trivial denoiser


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddpm"])
def test_head_samplers_match_a_diffusers_loop(prediction, sampler) -> None:
    head = _head(prediction)
    cond = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    x_t = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    ts = head.timesteps(10)
    common = {"num_train_timesteps": 100, "trained_betas": head.betas.float().tolist(),
              "prediction_type": PRED[prediction]}
    if sampler == "dpmpp_2m":
        sched = dpm(**common)
        got = head.sample(cond, sampler=sampler, steps=10, noise=x_t)
    else:
        sched = ddpm(**common, variance_type="fixed_large", clip_sample=False)
        got = head.sample(cond, sampler=sampler, steps=10, noise=x_t, variance_type="fixed_large",
                          generator=torch.Generator().manual_seed(6))
    sched.set_timesteps(timesteps=ts)
    # with `noise` given the head draws only the steps' noise from its generator, in order, as
    # diffusers' DDPM step does from the same seed
    x = scheduler_loop(head, sched, cond, x_t,
                       torch.Generator().manual_seed(6) if sampler == "ddpm" else None)
    scale = float(x.abs().max())
    torch.testing.assert_close(got, x, rtol=0, atol=1e-4 * scale)


def test_head_thresholding_and_option_errors() -> None:
    head = _head("eps")
    cond = torch.randn(2, 4)
    out = head.sample(cond, steps=5, dynamic_threshold_ratio=0.9, threshold_max=1.0,
                      generator=torch.Generator().manual_seed(0))
    clipped = head.sample(cond, steps=5, clip_x0=(-1.0, 1.0),
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, clipped)  # max 1: thresholding is clipping to [-1, 1]
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected `clip_x0` or "
                       r"`dynamic_threshold_ratio`, not both\.$"):
        head.sample(cond, clip_x0=(-1.0, 1.0), dynamic_threshold_ratio=0.9)
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected a head built with "
                       r"variance_type='learned_range' to sample with it, got a head with "
                       r"variance_type='fixed_small'\.$"):
        head.sample(cond, sampler="ddpm", variance_type="learned_range")
    with pytest.raises(ValueError, match=r"^DiffusionHead: unknown `variance_type` 'learned'"):
        head.sample(cond, sampler="ddpm", variance_type="learned")
    with pytest.raises(ValueError, match=r"^DiffusionHead: unknown `sampler` 'euler'; expected one "
                       r"of \['ddim', 'ddpm', 'dpmpp_2m'\]\.$"):
        head.sample(cond, sampler="euler")
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected `threshold_max` >= 1, got 0.5"):
        head.sample(cond, dynamic_threshold_ratio=0.9, threshold_max=0.5)


def test_new_functions_compile_fullgraph() -> None:
    g = torch.Generator().manual_seed(7)
    x, x0 = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    ab = torch.tensor([0.2, 0.3, 0.4])
    cases = [
        (lambda a, b: dynamic_threshold(a * 3, 0.9, 2.0), (x, x0)),
        (lambda a, b: dpm_solver_2m_step(a, b, ab, ab + 0.2, b * 0.5, ab - 0.1), (x, x0)),
        (lambda a, b: ddpm_step(b, a, ab, ab + 0.2, torch.ones_like(a), variance_type="fixed_large"),
         (x, x0)),
    ]
    for fn, args in cases:
        compiled = torch.compile(fn, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(*args), fn(*args))
