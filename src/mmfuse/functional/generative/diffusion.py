"""Diffusion math of the conditional generator heads: noise schedules, the forward process,
DDPM/DDIM/DPM-Solver++(2M) sampler steps, x0 thresholding, classifier-free guidance and
timestep embeddings.

Conventions (DDPM, Ho et al. 2020; DDIM, Song et al. 2021; v-prediction, Salimans & Ho 2022):
``alpha_bar[t] = prod_{s<=t} (1 - beta[s])`` for ``t = 0 .. T-1``; ``x_t = sqrt(alpha_bar[t]) x_0
+ sqrt(1 - alpha_bar[t]) eps``. "Before step 0" is the clean data, with ``alpha_bar = 1``.
Per-sample ``alpha_bar`` values are given as a Python float or a (B,) tensor; they broadcast
over the trailing dimensions of the target.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from ..._checks import (
    check_choice,
    check_data,
    check_interval,
    check_like,
    check_positive,
    check_probability,
    check_same_device,
    check_size,
    check_tensor,
)
from .latent import gaussian_kl

__all__ = [
    "alphas_cumprod",
    "beta_schedule",
    "classifier_free_guidance",
    "cosine_beta_schedule",
    "ddim_step",
    "ddpm_step",
    "ddpm_variance",
    "ddpm_vlb_term",
    "dpm_solver_2m_step",
    "dynamic_threshold",
    "linear_beta_schedule",
    "posterior_mean_variance",
    "predict_start",
    "q_sample",
    "scaled_linear_beta_schedule",
    "sigmoid_beta_schedule",
    "timestep_embedding",
    "v_target",
]

PREDICTIONS = ("eps", "v", "x0")
SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def _bcast(a: Tensor | float, like: Tensor) -> Tensor | float:
    """A (B,) tensor reshaped to (B, 1, ..., 1) to broadcast over ``like``; floats unchanged."""
    if isinstance(a, Tensor):
        return a.reshape(a.shape + (1,) * (like.dim() - a.dim())).to(like.dtype)  # (B, 1, ..)
    return a


def _sqrt(a: Tensor | float) -> Tensor | float:
    return a.sqrt() if isinstance(a, Tensor) else math.sqrt(a)


def _check_alpha(a: object, like: Tensor, batch: int, *, owner: str, arg: str,
                 like_arg: str = "x0") -> None:
    """A signal level: a Python number, a 0-d tensor or a (B,) floating tensor on ``like``'s
    device, with values in (0, 1] (tensor values checked in eager mode only)."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        if not 0 < a <= 1:  # NaN fails too
            raise ValueError(f"{owner}: expected `{arg}` in (0, 1], got {a!r}.")
        return
    if isinstance(a, Tensor) and a.dim() == 0:
        check_tensor(a, "", owner=owner, arg=arg)
    else:
        check_tensor(a, "B", owner=owner, arg=arg, B=batch)
    t = cast(Tensor, a)
    check_same_device({like_arg: like, arg: t}, owner=owner)
    if not torch.compiler.is_compiling() and t.device.type != "meta":
        bad = ~((t > 0) & (t <= 1))
        if bool(bad.any()):
            got = float(t.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]])
            raise ValueError(f"{owner}: expected `{arg}` in (0, 1], got {got}.")


def _check_alpha_order(alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float, *,
                       owner: str) -> None:
    """``alpha_bar < alpha_bar_prev`` (a step that removes noise: beta > 0); tensor values
    checked in eager mode only."""
    if isinstance(alpha_bar, Tensor) or isinstance(alpha_bar_prev, Tensor):
        if torch.compiler.is_compiling():
            return
        ab, abp = torch.broadcast_tensors(torch.as_tensor(alpha_bar).cpu(),
                                          torch.as_tensor(alpha_bar_prev).cpu())
        bad = (ab >= abp).reshape(-1)
        if not bool(bad.any()):
            return
        i = int(bad.nonzero()[0, 0])
        got = f"{float(ab.reshape(-1)[i]):.7g} and {float(abp.reshape(-1)[i]):.7g}"
        got += f" at sample {i}" if ab.dim() else ""
    elif alpha_bar < alpha_bar_prev:
        return
    else:
        got = f"{alpha_bar!r} and {alpha_bar_prev!r}"
    raise ValueError(f"{owner}: expected `alpha_bar` < `alpha_bar_prev` (a step that removes "
                     f"noise), got {got}.")


def _check_pair(x: object, y: object, alpha_bar: object, *, owner: str, x_arg: str,
                y_arg: str) -> None:
    """``x`` (B, ...) floating, ``y`` like it, ``alpha_bar`` a number or (B,)."""
    batch = check_data(x, owner=owner, arg=x_arg)
    x = cast(Tensor, x)
    check_like(y, x, owner=owner, arg=y_arg, ref_arg=x_arg)
    _check_alpha(alpha_bar, x, batch, owner=owner, arg="alpha_bar", like_arg=x_arg)


# ----------------------------------------------------------------------------- schedules


def _check_range(beta_start: float, beta_end: float, owner: str) -> None:
    check_interval(beta_start, 0.0, 1.0, owner=owner, arg="beta_start")
    check_interval(beta_end, 0.0, 1.0, owner=owner, arg="beta_end")
    if beta_start > beta_end:
        raise ValueError(
            f"{owner}: expected `beta_start` <= `beta_end`, got beta_start={beta_start!r}, "
            f"beta_end={beta_end!r}."
        )


def linear_beta_schedule(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2, *, rescale: bool = True
) -> Tensor:
    """DDPM's linear betas, by default **rescaled by 1000 / num_steps** so that any number of
    steps gives about the same total noise as DDPM's 1000.

    ``rescale=True`` (the default): ``beta[t] = linspace(s * beta_start, s * beta_end,
    num_steps)`` with ``s = 1000 / num_steps`` (Nichol & Dhariwal, 2021, appendix; clipped at
    0.999). At ``num_steps=1000`` this is DDPM's schedule; at other step counts it differs from
    diffusers' ``"linear"`` schedule, which never rescales (at T=250 the betas are 4x larger and
    ``alpha_bar`` differs by up to 0.475).
    ``rescale=False`` gives ``linspace(beta_start, beta_end, num_steps)``, as diffusers.

    Returns float64 of shape (num_steps,). ``beta_start`` and ``beta_end`` must lie in (0, 1)
    with ``beta_start <= beta_end``.
    """
    owner = "linear_beta_schedule"
    check_size(num_steps, owner=owner, arg="num_steps")
    _check_range(beta_start, beta_end, owner)
    scale = 1000.0 / num_steps if rescale else 1.0
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def scaled_linear_beta_schedule(
    num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Latent diffusion's (Stable Diffusion's) schedule, diffusers' ``"scaled_linear"``:
    ``beta[t] = linspace(sqrt(beta_start), sqrt(beta_end), num_steps) ** 2``, float64 (T,)."""
    owner = "scaled_linear_beta_schedule"
    check_size(num_steps, owner=owner, arg="num_steps")
    _check_range(beta_start, beta_end, owner)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def sigmoid_beta_schedule(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> Tensor:
    """GeoDiff's sigmoid schedule (Xu et al. 2022), diffusers' ``"sigmoid"``:
    ``beta[t] = beta_start + (beta_end - beta_start) sigmoid(linspace(-6, 6, num_steps))``,
    float64 (T,)."""
    owner = "sigmoid_beta_schedule"
    check_size(num_steps, owner=owner, arg="num_steps")
    _check_range(beta_start, beta_end, owner)
    x = torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def cosine_beta_schedule(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: ``alpha_bar(t) = f(t) / f(0)`` with
    ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``; betas clipped at ``max_beta``.

    ``beta[t] = 1 - alpha_bar(t + 1) / alpha_bar(t)``, so ``alphas_cumprod(beta)[t]`` is
    ``alpha_bar(t + 1)`` wherever no clipping happened. Returns float64 of shape (num_steps,).
    """
    check_size(num_steps, owner="cosine_beta_schedule", arg="num_steps")
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def beta_schedule(
    kind: str,
    num_steps: int,
    *,
    beta_start: float | None = None,
    beta_end: float | None = None,
    rescale: bool = True,
) -> Tensor:
    """Betas (float64, (num_steps,)) of a named schedule: ``"linear"``
    (:func:`linear_beta_schedule`, rescaled by 1000 / num_steps unless ``rescale=False``),
    ``"cosine"``, ``"scaled_linear"`` or ``"sigmoid"``. ``beta_start``/``beta_end`` (None: the
    schedule's default) apply to the three linear-family schedules, not to ``"cosine"``."""
    owner = "beta_schedule"
    check_choice(kind, SCHEDULES, owner=owner, arg="kind")
    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError(f"{owner}: expected no `beta_start`/`beta_end` for the cosine "
                             f"schedule, got beta_start={beta_start!r}, beta_end={beta_end!r}.")
        return cosine_beta_schedule(num_steps)
    fn = {"linear": linear_beta_schedule, "scaled_linear": scaled_linear_beta_schedule,
          "sigmoid": sigmoid_beta_schedule}[kind]
    kw = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
    if kind == "linear":
        return linear_beta_schedule(num_steps, **kw, rescale=rescale)
    return fn(num_steps, **kw)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """``alpha_bar[t] = prod_{s<=t} (1 - beta[s])``, same shape and dtype as ``betas``."""
    check_tensor(betas, "T", owner="alphas_cumprod", arg="betas")
    return torch.cumprod(1 - betas, dim=0)


# ----------------------------------------------------------------------------- forward process


def q_sample(x0: Tensor, noise: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """Noise clean data to step t: ``sqrt(ab) x0 + sqrt(1 - ab) noise``.

    Shape: x0, noise: (B, *); alpha_bar: float, 0-d or (B,); output: like x0.
    """
    _check_pair(x0, noise, alpha_bar, owner="q_sample", x_arg="x0", y_arg="noise")
    ab = _bcast(alpha_bar, x0)
    return _sqrt(ab) * x0 + _sqrt(1 - ab) * noise


def v_target(x0: Tensor, noise: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The v-prediction target ``sqrt(ab) noise - sqrt(1 - ab) x0``.

    Shape: x0, noise: (B, *); alpha_bar: float, 0-d or (B,); output: like x0.
    """
    _check_pair(x0, noise, alpha_bar, owner="v_target", x_arg="x0", y_arg="noise")
    ab = _bcast(alpha_bar, x0)
    return _sqrt(ab) * noise - _sqrt(1 - ab) * x0


def predict_start(
    x_t: Tensor, model_out: Tensor, alpha_bar: Tensor | float, prediction: str = "eps"
) -> tuple[Tensor, Tensor]:
    """Turn a denoiser's output into the predicted clean sample and noise, ``(x0, eps)``.

    Args:
        x_t: The noisy input at step t.
        model_out: The denoiser's output: eps, v or x0 according to ``prediction``.
        alpha_bar: ``alpha_bar[t]``, a float or (B,).
        prediction: ``"eps"``, ``"v"`` or ``"x0"``.
    """
    check_choice(prediction, PREDICTIONS, owner="predict_start", arg="prediction")
    ab = _bcast(alpha_bar, x_t)
    a, s = _sqrt(ab), _sqrt(1 - ab)
    if prediction == "eps":
        return (x_t - s * model_out) / a, model_out
    if prediction == "v":
        return a * x_t - s * model_out, s * x_t + a * model_out
    return model_out, (x_t - a * model_out) / s


def posterior_mean_variance(
    x0: Tensor, x_t: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> tuple[Tensor, Tensor | float]:
    """Mean and variance of ``q(x_prev | x_t, x0)`` between two (possibly strided) steps.

    With ``beta = 1 - ab / ab_prev``: variance ``beta (1 - ab_prev) / (1 - ab)``, mean
    ``sqrt(ab_prev) beta / (1 - ab) x0 + sqrt(1 - beta) (1 - ab_prev) / (1 - ab) x_t``.
    For consecutive steps this is DDPM's eq. (7).
    """
    ab, abp = _bcast(alpha_bar, x_t), _bcast(alpha_bar_prev, x_t)
    beta = 1 - ab / abp
    mean = _sqrt(abp) * beta / (1 - ab) * x0 + _sqrt(1 - beta) * (1 - abp) / (1 - ab) * x_t
    var = beta * (1 - abp) / (1 - ab)
    return mean, var


# ----------------------------------------------------------------------------- sampler steps


def ddpm_variance(
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    variance_type: str = "fixed_small",
    predicted: Tensor | None = None,
) -> Tensor | float:
    """Variance of an ancestral step from ``alpha_bar`` to ``alpha_bar_prev``.

    With ``beta = 1 - ab / ab_prev``: ``"fixed_small"`` is the posterior variance
    ``beta (1 - ab_prev) / (1 - ab)`` (DDPM's sigma^2 = beta-tilde), ``"fixed_large"`` is
    ``beta`` (DDPM's sigma^2 = beta), ``"learned_range"`` interpolates their logs with the
    model's ``predicted`` v in [-1, 1] (Nichol & Dhariwal 2021, eq. 15):
    ``exp(frac log beta + (1 - frac) log max(beta-tilde, 1e-20))``, ``frac = (v + 1) / 2``.
    Same conventions as diffusers' ``DDPMScheduler(variance_type=...)``.

    Shape: alpha_bar, alpha_bar_prev: float, 0-d or (B,); predicted: like the sample (only for
    ``"learned_range"``); output: a float, or a tensor broadcasting over the sample.
    """
    owner = "ddpm_variance"
    check_choice(variance_type, VARIANCE_TYPES, owner=owner, arg="variance_type")
    if (variance_type == "learned_range") != (predicted is not None):
        raise ValueError(f"{owner}: expected `predicted` exactly when variance_type="
                         f"'learned_range', got variance_type={variance_type!r} and "
                         f"predicted={'a tensor' if predicted is not None else None}.")
    like = predicted
    ab = _bcast(alpha_bar, like) if like is not None else alpha_bar
    abp = _bcast(alpha_bar_prev, like) if like is not None else alpha_bar_prev
    beta = 1 - ab / abp
    small = beta * (1 - abp) / (1 - ab)
    if variance_type == "fixed_small":
        return small
    if variance_type == "fixed_large":
        return beta
    assert predicted is not None
    return torch.exp(_learned_log_variance(beta, small, predicted))


def _learned_log_variance(beta: Tensor | float, small: Tensor | float, predicted: Tensor) -> Tensor:
    """``frac log beta + (1 - frac) log max(small, 1e-20)`` with ``frac = (predicted + 1) / 2``."""
    frac = (predicted + 1) / 2
    log_small = torch.log(torch.as_tensor(small, dtype=predicted.dtype,
                                          device=predicted.device).clamp_min(1e-20))
    log_beta = torch.log(torch.as_tensor(beta, dtype=predicted.dtype, device=predicted.device))
    return frac * log_beta + (1 - frac) * log_small


def ddpm_step(
    x0: Tensor,
    x_t: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    noise: Tensor | None,
    *,
    variance_type: str = "fixed_small",
    predicted_variance: Tensor | None = None,
) -> Tensor:
    """One ancestral step: the posterior mean of ``q(x_prev | x_t, x0_pred)`` plus
    ``sqrt(variance) noise`` with the variance of :func:`ddpm_variance` (``"fixed_small"``: a
    draw from the posterior itself); ``noise=None`` returns the mean (used for the last step).
    """
    mean, _ = posterior_mean_variance(x0, x_t, alpha_bar, alpha_bar_prev)
    if noise is None:
        return mean
    var = ddpm_variance(alpha_bar, alpha_bar_prev, variance_type, predicted_variance)
    if isinstance(var, Tensor) and var.dim() == 1:
        var = _bcast(var, x_t)
    return mean + _sqrt(var) * noise


_SQRT_HALF = math.sqrt(0.5)


def _log_ndtr(z: Tensor) -> Tensor:
    """``log Phi(z)``, the standard normal log-CDF, with a gradient that stays right in the far
    lower tail (``torch.special.log_ndtr``'s loses its precision past |z| ~ 100 in float32):
    ``log(erfcx(-z / sqrt 2) / 2) - z^2 / 2`` below 0, ``log1p(-erfc(z / sqrt 2) / 2)`` above.
    Each branch sees only its own half of the inputs, so the other's overflow cannot reach
    the gradient."""
    low, high = z.clamp(max=0), z.clamp(min=0)
    below = torch.log(torch.special.erfcx(-low * _SQRT_HALF) / 2) - low * low / 2
    above = torch.log1p(-torch.special.erfc(high * _SQRT_HALF) / 2)
    return torch.where(z < 0, below, above)


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Elementwise log-probability of data in [-1, 1] quantised to 256 levels (bins of width
    2/255 around each value, the two end bins reaching to -inf and +inf) under
    N(mean, exp(log_var)): DDPM's decoder (Ho et al. 2020, eq. 13), in nats.

    Taken in log space throughout, so a bin far in either tail keeps its value and its
    gradient (a difference of two CDFs rounds to 0 there and needs a floor, which stops the
    gradient where the model is most wrong)."""
    inv_std = torch.exp(-0.5 * log_var)
    centre, half = inv_std * (x - mean), inv_std / 255  # standardised bin centre, half-width
    lo, hi = centre - half, centre + half
    # an inner bin as Phi(b) - Phi(a), a < b, mirrored (Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi))
    # when it lies above 0, so that neither CDF is one rounded to 1
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_a, log_b = _log_ndtr(a), _log_ndtr(b)
    # log Phi(a) - log Phi(b) <= (b^2 - a^2) / 2 = (b - a) (a + b) / 2 here (the inverse Mills
    # ratio exceeds -z): the bound, from the exact width, keeps the gap below 0 where the far
    # tails round both logs (or both edges) to one value
    gap = torch.minimum(log_a - log_b, 2 * half * torch.where(flip, -centre, centre))
    inner = log_b + torch.log(-torch.expm1(gap))
    return torch.where(x < -0.999, _log_ndtr(hi),  # P(X <= x + 1/255)
                       torch.where(x > 0.999, _log_ndtr(-lo), inner))  # P(X >= x - 1/255)


def ddpm_vlb_term(
    x0: Tensor,
    x_t: Tensor,
    x0_pred: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    predicted_variance: Tensor,
) -> Tensor:
    """One term ``L_t`` of the variational bound with a learned-range variance (Nichol &
    Dhariwal 2021), per sample, in bits per dimension.

    The model's step ``p(x_prev | x_t)`` is Gaussian with the mean of
    ``q(x_prev | x_t, x0_pred)`` (:func:`posterior_mean_variance`) and the variance of
    :func:`ddpm_variance` with ``"learned_range"`` and ``predicted_variance`` (v in [-1, 1]).
    Where ``alpha_bar_prev < 1`` the term is ``KL(q(x_prev | x_t, x0) || p(x_prev | x_t))``
    (the posterior's log-variance floored at log 1e-20, as :func:`ddpm_variance`); where
    ``alpha_bar_prev == 1`` (the first step) it is the decoder's negative log-likelihood
    ``-log p(x0 | x_1)``, DDPM's discretised Gaussian for data in [-1, 1] at 8 bits (bins of
    width 2/255, the end bins open), taken in log space so that it and its gradient stay finite
    for a bin any number of stds into a tail, exact as far as the dtype resolves the bin (no
    floor on the bin's mass). The decoder's learned range runs down to ``log 1e-20``, the floor
    of :func:`ddpm_variance` and diffusers' sampler; Improved DDPM's code uses the next step's
    posterior variance there instead, so its ``L_0`` differs for the same ``v``. Both terms are
    averaged over the non-batch dimensions and divided by ``ln 2``, as the paper's code reports
    them. ``alpha_bar < alpha_bar_prev`` is required (checked for tensors in eager mode).

    For the hybrid objective ``L_simple + lambda L_vlb`` (lambda = 0.001), pass a detached
    ``x0_pred``, so that this term trains only the variance, and estimate ``L_vlb`` by
    ``T L_t`` at a uniform ``t``. Gradients flow to ``x0_pred`` and ``predicted_variance``.
    Computed in float32 at least (float64 stays float64).

    Shape: x0, x_t, x0_pred, predicted_variance: (B, *); alpha_bars: float, 0-d or (B,);
    output: (B,).
    """
    owner = "ddpm_vlb_term"
    batch = check_data(x0, owner=owner, arg="x0")
    for arg, value in (("x_t", x_t), ("x0_pred", x0_pred),
                       ("predicted_variance", predicted_variance)):
        check_like(value, x0, owner=owner, arg=arg, ref_arg="x0")
    _check_alpha(alpha_bar, x0, batch, owner=owner, arg="alpha_bar")
    _check_alpha(alpha_bar_prev, x0, batch, owner=owner, arg="alpha_bar_prev")
    _check_alpha_order(alpha_bar, alpha_bar_prev, owner=owner)
    work = torch.promote_types(x0.dtype, torch.float32)
    x0w, xtw, predw, vw = (a.to(work) for a in (x0, x_t, x0_pred, predicted_variance))
    ab = alpha_bar.to(work) if isinstance(alpha_bar, Tensor) else alpha_bar
    abp = alpha_bar_prev.to(work) if isinstance(alpha_bar_prev, Tensor) else alpha_bar_prev
    true_mean, true_var = posterior_mean_variance(x0w, xtw, ab, abp)
    model_mean, _ = posterior_mean_variance(predw, xtw, ab, abp)
    abb, abpb = _bcast(ab, vw), _bcast(abp, vw)
    beta = 1 - abb / abpb
    model_log_var = _learned_log_variance(beta, beta * (1 - abpb) / (1 - abb), vw)
    true_log_var = torch.log(torch.as_tensor(true_var, dtype=work, device=x0.device)
                             .clamp_min(1e-20)).expand_as(x0w)
    numel = math.prod(x0.shape[1:])
    flat = (batch, numel)
    first = torch.as_tensor(abp, device=x0.device) >= 1  # 0-d or (B,): the decoder's samples
    first_x = first.reshape(first.shape + (1,) * (x0.dim() - first.dim()))
    # each term sees the model only in its own samples (the exact posterior in the others), so
    # an overflow in the term not taken cannot turn the gradient of the one taken into NaN
    kl_mean = torch.where(first_x, true_mean, model_mean)
    kl_log_var = torch.where(first_x, true_log_var, model_log_var)
    kl = gaussian_kl(true_mean.reshape(flat), true_log_var.reshape(flat),
                     kl_mean.reshape(flat), kl_log_var.reshape(flat))  # (B,) summed
    nll = -_discretized_gaussian_log_likelihood(x0w, torch.where(first_x, model_mean, x0w),
                                                torch.where(first_x, model_log_var, 0.0))
    nll = nll.reshape(flat).sum(-1)  # (B,)
    return torch.where(first, nll, kl) / (max(numel, 1) * math.log(2.0))


# ----------------------------------------------------------------------------- x0 thresholding


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float | None = None) -> Tensor:
    """Dynamic thresholding of a predicted clean sample (Saharia et al. 2022, Imagen).

    Per sample, ``s`` is the ``ratio`` quantile of ``|x0|`` over all its values, clamped to
    ``[1, max_value]``; the sample is clipped to ``[-s, s]`` and divided by ``s``. With ``s``
    clamped to 1 this is plain clipping to [-1, 1]. diffusers' ``thresholding=True`` is this
    with ``max_value=sample_max_value`` (its default 1.0 reduces it to clipping); None means no
    upper bound (Imagen). The quantile is computed in float32 at least.

    Shape: x0: (B, *); output: like x0.
    """
    owner = "dynamic_threshold"
    check_data(x0, owner=owner, arg="x0")
    check_probability(ratio, owner=owner, arg="ratio", closed=True)
    if max_value is not None:
        check_positive(max_value, owner=owner, arg="max_value")
        if max_value < 1:
            raise ValueError(f"{owner}: expected `max_value` >= 1, got {max_value!r}.")
    work = x0 if x0.dtype in (torch.float32, torch.float64) else x0.float()
    flat = work.reshape(work.shape[0], -1)  # (B, numel)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)[:, None]  # (B, 1)
    out = torch.maximum(torch.minimum(flat, s), -s) / s
    return out.reshape(x0.shape).to(x0.dtype)


# ----------------------------------------------------------------------------- DPM-Solver++


def _alpha_sigma_lambda(ab: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    return alpha, sigma, torch.log(alpha) - torch.log(sigma)


def dpm_solver_2m_step(
    x: Tensor,
    x0: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    x0_last: Tensor | None = None,
    alpha_bar_last: Tensor | float | None = None,
) -> Tensor:
    """One step of DPM-Solver++(2M) (Lu et al. 2022, algorithm 2, midpoint form), the
    second-order multistep solver of diffusers' ``DPMSolverMultistepScheduler``.

    From ``x`` at ``alpha_bar`` (the current step s0, whose predicted clean sample is ``x0``)
    to ``alpha_bar_prev`` (the next, less noisy step t). With ``alpha = sqrt(ab)``,
    ``sigma = sqrt(1 - ab)``, ``lambda = log(alpha / sigma)``, ``h = lambda_t - lambda_s0``:
    ``x_t = sigma_t / sigma_s0 x - alpha_t (e^{-h} - 1) (D0 + D1 / 2)`` with ``D0 = x0`` and
    ``D1 = (h / h_0) (x0 - x0_last)``, ``h_0 = lambda_s0 - lambda_s1``, where ``x0_last`` is the
    previous step's prediction at ``alpha_bar_last`` (s1). Without a history
    (``x0_last=None``: the first step) it is the first-order step, which equals deterministic
    DDIM. ``alpha_bar_prev = 1`` (the end, sigma_t = 0) returns ``x0``.

    Shape: x, x0, x0_last: (B, *); alpha_bars: float, 0-d or (B,); output: like x.
    """
    owner = "dpm_solver_2m_step"
    batch = check_data(x, owner=owner, arg="x")
    check_like(x0, x, owner=owner, arg="x0", ref_arg="x")
    _check_alpha(alpha_bar, x, batch, owner=owner, arg="alpha_bar", like_arg="x")
    _check_alpha(alpha_bar_prev, x, batch, owner=owner, arg="alpha_bar_prev", like_arg="x")
    if (x0_last is None) != (alpha_bar_last is None):
        raise ValueError(f"{owner}: expected `x0_last` and `alpha_bar_last` together or neither.")

    def as_t(a: Tensor | float) -> Tensor:
        t = torch.as_tensor(a, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        return t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() else t

    a_s, s_s, l_s = _alpha_sigma_lambda(as_t(alpha_bar))
    ab_t = as_t(alpha_bar_prev)
    a_t, s_t = ab_t.sqrt(), (1 - ab_t).sqrt()
    end = s_t <= 0
    # alpha_t (e^{-h} - 1) = alpha_s sigma_t / sigma_s - alpha_t, finite at the end
    coef = a_s * s_t / s_s - a_t
    out = (s_t / s_s) * x - coef * x0
    if x0_last is not None:
        assert alpha_bar_last is not None
        check_like(x0_last, x, owner=owner, arg="x0_last", ref_arg="x")
        _check_alpha(alpha_bar_last, x, batch, owner=owner, arg="alpha_bar_last", like_arg="x")
        _, _, l_last = _alpha_sigma_lambda(as_t(alpha_bar_last))
        l_t = torch.log(a_t) - torch.log(torch.where(end, torch.ones_like(s_t), s_t))
        ratio = torch.where(end, torch.zeros_like(l_t), (l_t - l_s) / (l_s - l_last))  # h / h_0
        out = out - 0.5 * coef * ratio * (x0 - x0_last)
    return out.to(x.dtype)


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from predicted ``x0`` and ``eps``.

    ``sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev)``;
    ``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma noise``.
    ``eta=0`` is deterministic (``noise`` ignored); ``eta=1`` matches DDPM's variance.

    Shape: x0, eps, noise: (B, *); alpha_bar, alpha_bar_prev: float, 0-d or (B,).
    """
    owner = "ddim_step"
    _check_pair(x0, eps, alpha_bar, owner=owner, x_arg="x0", y_arg="eps")
    _check_alpha(alpha_bar_prev, x0, x0.shape[0], owner=owner, arg="alpha_bar_prev")
    check_positive(eta, owner=owner, arg="eta", allow_zero=True)
    if noise is not None:
        check_like(noise, x0, owner=owner, arg="noise", ref_arg="x0")
    abp = _bcast(alpha_bar_prev, x0)
    ab = _bcast(alpha_bar, x0)
    out = _sqrt(abp) * x0
    if eta == 0 or noise is None:
        return out + _sqrt(1 - abp) * eps
    sigma2 = eta**2 * (1 - abp) / (1 - ab) * (1 - ab / abp)
    return out + _sqrt(1 - abp - sigma2) * eps + _sqrt(sigma2) * noise


def classifier_free_guidance(cond_out: Tensor, uncond_out: Tensor, scale: float) -> Tensor:
    """``uncond + scale (cond - uncond)`` (Ho & Salimans, 2022): 1 is plain conditional
    output, 0 unconditional, above 1 pushes towards the condition.

    Shape: cond_out, uncond_out: (B, *); output: like them.
    """
    owner = "classifier_free_guidance"
    check_data(cond_out, owner=owner, arg="cond_out")
    check_like(uncond_out, cond_out, owner=owner, arg="uncond_out", ref_arg="cond_out")
    return uncond_out + scale * (cond_out - uncond_out)


# ----------------------------------------------------------------------------- embeddings


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer.

    ``[cos(t w_k), sin(t w_k)]`` with ``w_k = max_period^(-k / (dim // 2))``; an odd ``dim``
    is padded with one zero. Computed and returned in float32.

    Shape: t: (B,); output: (B, dim)
    """
    check_tensor(t, "B", owner="timestep_embedding", arg="t", floating=None)
    check_size(dim, owner="timestep_embedding", arg="dim")
    check_positive(max_period, owner="timestep_embedding", arg="max_period")
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = t.to(torch.float32)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
