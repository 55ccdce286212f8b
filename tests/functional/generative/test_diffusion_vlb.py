"""ddpm_vlb_term (Improved DDPM's variational-bound term with a learned-range variance) against
a naive float64 reference written element by element from the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import ddpm_variance, ddpm_vlb_term


def naive_term(x0, x_t, x0_pred, ab, abp, v) -> float:
    """L_t of one sample in bits per dimension, from Python floats.

    Posterior of a (strided) step, DDPM eq. 6-7: beta = 1 - ab / abp,
    mu = sqrt(abp) beta / (1 - ab) x0 + sqrt(1 - beta) (1 - abp) / (1 - ab) x_t,
    beta-tilde = beta (1 - abp) / (1 - ab). Learned range (Improved DDPM eq. 15):
    log sigma^2 = frac log beta + (1 - frac) log beta-tilde, frac = (v + 1) / 2, beta-tilde
    floored at 1e-20. t > 0: KL of two Gaussians; t = 0: -log of the discretised Gaussian's
    mass on x0's bin (DDPM eq. 13, data in [-1, 1], bins 2/255 wide, the end bins open).
    """
    beta = 1 - ab / abp
    small = max(beta * (1 - abp) / (1 - ab), 1e-20)
    total = 0.0
    for a, xt, p, vv in zip(x0, x_t, x0_pred, v):
        mu_q = math.sqrt(abp) * beta / (1 - ab) * a + math.sqrt(1 - beta) * (1 - abp) / (1 - ab) * xt
        mu_p = math.sqrt(abp) * beta / (1 - ab) * p + math.sqrt(1 - beta) * (1 - abp) / (1 - ab) * xt
        frac = (vv + 1) / 2
        lv_p = frac * math.log(beta) + (1 - frac) * math.log(small)
        if abp < 1:
            lv_q = math.log(small)
            total += 0.5 * (-1 + lv_p - lv_q + math.exp(lv_q - lv_p)
                            + (mu_q - mu_p) ** 2 * math.exp(-lv_p))
        else:
            sd = math.exp(0.5 * lv_p)

            def cdf(z: float) -> float:
                return 0.5 * (1 + math.erf(z / math.sqrt(2)))

            up, lo = cdf((a + 1 / 255 - mu_p) / sd), cdf((a - 1 / 255 - mu_p) / sd)
            mass = up if a < -0.999 else (1 - lo if a > 0.999 else up - lo)
            total += -math.log(max(mass, 1e-12))
    return total / len(x0) / math.log(2)


def batch(seed: int = 0, shape=(5, 2, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # 8-bit data in [-1, 1], with values at both ends (the open bins)
    x0 = (torch.randint(0, 256, shape, generator=g) / 127.5 - 1).to(dtype)
    x0.view(shape[0], -1)[:, 0], x0.view(shape[0], -1)[:, 1] = -1.0, 1.0
    x_t = torch.randn(shape, generator=g, dtype=dtype)
    x0_pred = x0 + 0.05 * torch.randn(shape, generator=g, dtype=dtype)
    v = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    return x0, x_t, x0_pred, v


def test_matches_the_paper_formulas_per_sample() -> None:
    x0, x_t, x0_pred, v = batch()
    ab = torch.tensor([0.3, 0.05, 0.9, 0.97, 0.6], dtype=torch.float64)
    abp = torch.tensor([0.4, 0.2, 0.95, 1.0, 1.0], dtype=torch.float64)  # two first steps
    v[3:] = 0.8 + 0.2 * v[3:].abs()  # near beta at t = 0, where the bins are resolved
    got = ddpm_vlb_term(x0, x_t, x0_pred, ab, abp, v)
    assert got.shape == (5,) and got.dtype == torch.float64
    want = torch.tensor([naive_term(x0[i].reshape(-1).tolist(), x_t[i].reshape(-1).tolist(),
                                    x0_pred[i].reshape(-1).tolist(), float(ab[i]),
                                    float(abp[i]), v[i].reshape(-1).tolist())
                         for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert bool((want > 0).all())
    # a number for the alpha_bars gives the same as a full column of it
    for i in (0, 3):
        one = ddpm_vlb_term(x0[i:i + 1], x_t[i:i + 1], x0_pred[i:i + 1], float(ab[i]),
                            float(abp[i]), v[i:i + 1])
        torch.testing.assert_close(one, got[i:i + 1], rtol=1e-12, atol=0)


def test_kl_vanishes_at_the_true_posterior_and_grows_away_from_it() -> None:
    x0, x_t, _, _ = batch(1)
    ab, abp = 0.4, 0.5
    small = torch.full_like(x0, -1.0)  # v = -1: the posterior variance itself
    zero = ddpm_vlb_term(x0, x_t, x0, ab, abp, small)
    torch.testing.assert_close(zero, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((ddpm_vlb_term(x0, x_t, x0, ab, abp, small + 0.5) > 1e-4).all())
    assert bool((ddpm_vlb_term(x0, x_t, x0 + 0.1, ab, abp, small) > 1e-4).all())


def test_gradients_against_finite_differences() -> None:
    x0, x_t, x0_pred, v = batch(2, shape=(3, 4))
    ab = torch.tensor([0.2, 0.7, 0.9], dtype=torch.float64)
    abp = torch.tensor([0.3, 0.8, 1.0], dtype=torch.float64)
    x0_pred.requires_grad_(True)
    v = (0.5 + 0.4 * v).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, w: ddpm_vlb_term(x0, x_t, p, ab, abp, w),
                                    (x0_pred, v))


def test_learned_variance_is_the_one_of_ddpm_variance() -> None:
    # the model's log-variance in the term is that of the sampler: with x0_pred = x0 the KL
    # reduces to the variance part, 0.5 (r - 1 - log r) per element, r = small / var
    x0, x_t, _, v = batch(3, shape=(2, 6))
    ab, abp = 0.25, 0.45
    var = ddpm_variance(ab, abp, "learned_range", v)
    assert isinstance(var, torch.Tensor)
    beta = 1 - ab / abp
    r = beta * (1 - abp) / (1 - ab) / var
    want = (0.5 * (r - 1 - r.log())).mean(-1) / math.log(2)
    torch.testing.assert_close(ddpm_vlb_term(x0, x_t, x0, ab, abp, v), want)


@pytest.mark.parametrize("dtype, want", [(torch.float32, torch.float32),
                                         (torch.bfloat16, torch.float32),
                                         (torch.float64, torch.float64)])
def test_dtype_and_device_follow_the_inputs(dtype, want) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    x0, x_t, x0_pred, v = batch(4, shape=(2, 3))
    ref = ddpm_vlb_term(x0, x_t, x0_pred, 0.5, 0.6, v)
    for device in devices:
        args = [a.to(device=device, dtype=dtype) for a in (x0, x_t, x0_pred, v)]
        got = ddpm_vlb_term(*args[:3], torch.tensor([0.5, 0.5], device=device),
                            torch.tensor([0.6, 0.6], device=device), args[3])
        assert got.dtype == want and got.device.type == device
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(got.double().cpu(), ref, rtol=tol, atol=tol)


def test_empty_batch() -> None:
    x0, x_t, x0_pred, v = (a[:0] for a in batch(6, shape=(2, 3)))
    assert ddpm_vlb_term(x0, x_t, x0_pred, 0.5, 1.0, v).shape == (0,)


def test_argument_errors() -> None:
    x0, x_t, x0_pred, v = batch(5, shape=(2, 3))
    with pytest.raises(ShapeError, match=r"^ddpm_vlb_term: expected `predicted_variance` of "
                       r"shape \(2, 3\) like `x0`, got \(2, 6\)\.$"):
        ddpm_vlb_term(x0, x_t, x0_pred, 0.5, 0.6, torch.cat([v, v], 1))
    with pytest.raises(ShapeError, match=r"^ddpm_vlb_term: expected `x0_pred` of shape "
                       r"\(2, 3\) like `x0`, got \(3,\)\.$"):
        ddpm_vlb_term(x0, x_t, x0_pred[0], 0.5, 0.6, v)
    with pytest.raises(ValueError, match=r"^ddpm_vlb_term: expected `alpha_bar_prev` in "
                       r"\(0, 1\], got 1\.5\.$"):
        ddpm_vlb_term(x0, x_t, x0_pred, 0.5, 1.5, v)
    with pytest.raises(ShapeError, match=r"^ddpm_vlb_term: expected `alpha_bar` of shape "):
        ddpm_vlb_term(x0, x_t, x0_pred, torch.tensor([0.5, 0.5, 0.5]), 0.6, v)


def _mp_log_mass(x: float, mean: float, log_var: float) -> tuple[float, float]:
    """log of the decoder's mass on x's bin and its derivative in the mean, at 60 digits:
    mpmath's normal CDF has no underflow, so a bin any number of stds into a tail is exact."""
    mp = pytest.importorskip("mpmath").mp
    mp.dps = 60
    sd = mp.exp(mp.mpf(log_var) / 2)
    lo = (mp.mpf(x) - mp.mpf(1) / 255 - mp.mpf(mean)) / sd
    hi = (mp.mpf(x) + mp.mpf(1) / 255 - mp.mpf(mean)) / sd
    if x < -0.999:
        mass, slope = mp.ncdf(hi), -mp.npdf(hi)
    elif x > 0.999:
        mass, slope = mp.ncdf(-lo), mp.npdf(lo)
    else:  # mirrored above 0 so the difference is not one of two numbers near 1
        mass = mp.ncdf(-lo) - mp.ncdf(-hi) if lo > 0 else mp.ncdf(hi) - mp.ncdf(lo)
        slope = mp.npdf(lo) - mp.npdf(hi)
    return float(mp.log(mass)), float(slope / sd / mass)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-3)])
def test_decoder_term_in_the_far_tails(dtype: torch.dtype, rtol: float) -> None:
    # the first step (alpha_bar_prev = 1): the model's mean is x0_pred, its log-variance runs
    # from beta's down to log 1e-20, and the predictions sit up to 1e10 stds off their bins,
    # where a difference of CDFs is 0: the term and its gradient must follow the exact ones
    n, ab = 600, 0.99
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 256, (n, 1), generator=g) / 127.5 - 1
    x0[:60], x0[60:120] = -1.0, 1.0  # the open end bins
    spread = torch.tensor([1e-3, 1e-2, 0.1, 1.0, 3.0])[torch.randint(0, 5, (n, 1), generator=g)]
    x0 = x0.to(dtype)
    x0_pred = (x0 + spread * torch.randn(n, 1, generator=g)).to(dtype).requires_grad_(True)
    v = (torch.rand(n, 1, generator=g) * 2 - 1).to(dtype)
    got = ddpm_vlb_term(x0, torch.randn(n, 1, dtype=dtype), x0_pred, ab, 1.0, v)
    got.sum().backward()
    frac = (v.double() + 1) / 2  # the learned-range log-variance, beta-tilde floored at 1e-20
    log_var = frac * math.log(1 - ab) + (1 - frac) * math.log(1e-20)
    ref = [_mp_log_mass(a, m, lv) for a, m, lv in zip(x0.double().flatten().tolist(),
                                                      x0_pred.detach().double().flatten().tolist(),
                                                      log_var.flatten().tolist())]
    want = torch.tensor([-r[0] for r in ref], dtype=torch.float64) / math.log(2)
    want_grad = torch.tensor([-r[1] for r in ref], dtype=torch.float64) / math.log(2)
    assert float(want.max()) > 1e15  # bins 1e8+ stds away are in the draw
    assert bool(torch.isfinite(got).all() and torch.isfinite(x0_pred.grad).all())
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol)
    torch.testing.assert_close(x0_pred.grad.double().flatten(), want_grad, rtol=rtol, atol=rtol)


def test_steps_that_do_not_remove_noise_are_rejected() -> None:
    x0, x_t, x0_pred, v = batch(8, shape=(2, 3))
    for ab, abp, got in ((0.5, 0.5, "0.5 and 0.5"), (0.6, 0.5, "0.6 and 0.5"),
                         (1.0, 1.0, "1.0 and 1.0"),
                         (torch.tensor([0.5, 0.7]), torch.tensor([0.6, 0.7]),
                          "0.7 and 0.7 at sample 1")):
        with pytest.raises(ValueError, match=r"^ddpm_vlb_term: expected `alpha_bar` < "
                           r"`alpha_bar_prev` \(a step that removes noise\), got "
                           + got.replace(".", r"\.") + r"\.$"):
            ddpm_vlb_term(x0, x_t, x0_pred, ab, abp, v)


def test_a_far_off_prediction_keeps_finite_gradients_in_both_terms() -> None:
    # one KL sample and one decoder sample, 1e6 off in float32 at the smallest variance: each
    # term's overflow in the other's samples must not reach the gradient (0 x inf = NaN)
    x0 = torch.zeros(2, 3)
    x0_pred = torch.full((2, 3), 1e6, requires_grad=True)
    v = torch.full((2, 3), -1.0, requires_grad=True)
    out = ddpm_vlb_term(x0, torch.zeros(2, 3), x0_pred, torch.tensor([0.5, 0.9]),
                        torch.tensor([0.6, 1.0]), v)
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool((out > 1e10).all())
    assert x0_pred.grad is not None and v.grad is not None
    assert bool(torch.isfinite(x0_pred.grad).all() and (x0_pred.grad > 0).all())
    assert bool(torch.isfinite(v.grad).all())
