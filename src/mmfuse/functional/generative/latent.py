"""Gaussian latents of the conditional VAE heads: reparameterised draws and the KL term."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import (
    check_broadcast_together,
    check_floating,
    check_same_device,
    check_tensor,
)

__all__ = ["gaussian_kl", "reparameterize"]


def reparameterize(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """``mean + exp(logvar / 2) noise``: a differentiable draw from N(mean, exp(logvar)).

    Shape: mean, logvar, noise: floating, broadcastable together; output: their broadcast.
    """
    owner = "reparameterize"
    args = {"mean": mean, "logvar": logvar, "noise": noise}
    for arg, x in args.items():
        check_floating(x, owner=owner, arg=arg)
    check_broadcast_together(args, owner=owner)
    check_same_device(args, owner=owner)
    return mean + torch.exp(0.5 * logvar) * noise


def gaussian_kl(
    mean: Tensor,
    logvar: Tensor,
    prior_mean: Tensor | None = None,
    prior_logvar: Tensor | None = None,
) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(prior_mean, exp(prior_logvar))) of diagonal Gaussians,
    summed over the last dimension; the prior defaults to N(0, I).

    Computed in float32 at least (float64 stays float64).

    Shape: all (B, D) (the prior broadcastable); output (B,).
    """
    n = check_tensor(mean, "B D", owner="gaussian_kl", arg="mean")
    check_tensor(logvar, "B D", owner="gaussian_kl", arg="logvar", B=n["B"], D=n["D"])
    work = torch.promote_types(mean.dtype, torch.float32)
    mq, lq = mean.to(work), logvar.to(work)
    if prior_mean is None and prior_logvar is None:
        kl = 0.5 * (lq.exp() + mq.square() - 1 - lq)
    else:
        mp = torch.zeros_like(mq) if prior_mean is None else prior_mean.to(work)
        lp = torch.zeros_like(lq) if prior_logvar is None else prior_logvar.to(work)
        kl = 0.5 * (lp - lq + (lq.exp() + (mq - mp).square()) * torch.exp(-lp) - 1)
    return kl.sum(-1)
