"""Diffusion math of the conditional generator heads: noise schedules, the forward process,
DDPM/DDIM sampler steps, classifier-free guidance and timestep embeddings.

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
    check_same_device,
    check_size,
    check_tensor,
)

__all__ = [
    "alphas_cumprod",
    "beta_schedule",
    "classifier_free_guidance",
    "cosine_beta_schedule",
    "ddim_step",
    "ddpm_step",
    "linear_beta_schedule",
    "posterior_mean_variance",
    "predict_start",
    "q_sample",
    "timestep_embedding",
    "v_target",
]

PREDICTIONS = ("eps", "v", "x0")
SCHEDULES = ("linear", "cosine")


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


def _check_pair(x: object, y: object, alpha_bar: object, *, owner: str, x_arg: str,
                y_arg: str) -> None:
    """``x`` (B, ...) floating, ``y`` like it, ``alpha_bar`` a number or (B,)."""
    batch = check_data(x, owner=owner, arg=x_arg)
    x = cast(Tensor, x)
    check_like(y, x, owner=owner, arg=y_arg, ref_arg=x_arg)
    _check_alpha(alpha_bar, x, batch, owner=owner, arg="alpha_bar", like_arg=x_arg)


# ----------------------------------------------------------------------------- schedules


def linear_beta_schedule(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> Tensor:
    """DDPM's linear betas, rescaled so any ``num_steps`` gives the same total noise as 1000.

    ``beta[t] = linspace(s * beta_start, s * beta_end, num_steps)`` with ``s = 1000 / num_steps``
    (Nichol & Dhariwal, 2021, appendix). Returns float64 of shape (num_steps,).
    ``beta_start`` and ``beta_end`` must lie in (0, 1) with ``beta_start <= beta_end``.
    """
    owner = "linear_beta_schedule"
    check_size(num_steps, owner=owner, arg="num_steps")
    check_interval(beta_start, 0.0, 1.0, owner=owner, arg="beta_start")
    check_interval(beta_end, 0.0, 1.0, owner=owner, arg="beta_end")
    if beta_start > beta_end:
        raise ValueError(
            f"{owner}: expected `beta_start` <= `beta_end`, got beta_start={beta_start!r}, "
            f"beta_end={beta_end!r}."
        )
    scale = 1000.0 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return betas.clamp(max=0.999)


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


def beta_schedule(kind: str, num_steps: int) -> Tensor:
    """``"linear"`` or ``"cosine"`` betas (float64, (num_steps,))."""
    check_choice(kind, SCHEDULES, owner="beta_schedule", arg="kind")
    if kind == "linear":
        return linear_beta_schedule(num_steps)
    return cosine_beta_schedule(num_steps)


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


def ddpm_step(
    x0: Tensor,
    x_t: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    noise: Tensor | None,
) -> Tensor:
    """One ancestral step: a draw from ``q(x_prev | x_t, x0_pred)``; ``noise=None`` returns
    the mean (used for the last step)."""
    mean, var = posterior_mean_variance(x0, x_t, alpha_bar, alpha_bar_prev)
    return mean if noise is None else mean + _sqrt(var) * noise


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
