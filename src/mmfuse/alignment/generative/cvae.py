"""A conditional variational autoencoder head: q(z|x,c), p(z|c), p(x|z,c)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from ..._checks import (
    check_choice,
    check_inputs,
    check_positive,
    check_same_device,
    check_size,
    check_tensor,
)
from ..._precision import feature_output
from ...functional import gaussian_kl, reparameterize
from ._common import check_loss_batch, check_target, draw_normal
from ._common import target_shape as _target_shape

__all__ = ["CVAEHead", "CVAELoss", "CVAEOutput"]

PRIORS = ("learned", "standard")


class CVAEOutput(NamedTuple):
    """Output of :meth:`CVAEHead.forward`.

    Attributes:
        reconstruction: (B, *target_shape) the decoded mean of p(x|z,c).
        mean, logvar: (B, L) the posterior q(z|x,c).
        prior_mean, prior_logvar: (B, L) the prior p(z|c) (zeros for the standard prior).
        z: (B, L) the latent that was decoded.
    """

    reconstruction: Tensor
    mean: Tensor
    logvar: Tensor
    prior_mean: Tensor
    prior_logvar: Tensor
    z: Tensor


class CVAELoss(NamedTuple):
    """Output of :meth:`CVAEHead.loss`: scalars in float32 (or float64).

    Attributes:
        total: ``reconstruction + beta * kl``, the negative ELBO per sample (up to a constant).
        reconstruction: Batch mean of ``sum((x - x_hat)^2) / (2 obs_sigma^2)``: the Gaussian
            negative log-likelihood without its constant.
        kl: Batch mean of ``KL(q(z|x,c) || p(z|c))``.
    """

    total: Tensor
    reconstruction: Tensor
    kl: Tensor


def _mlp(d_in: int, hidden: int, d_out: int, dd: dict[str, Any]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden, **dd), nn.SiLU(),
        nn.Linear(hidden, hidden, **dd), nn.SiLU(),
        nn.Linear(hidden, d_out, **dd),
    )


class CVAEHead(nn.Module):
    """Conditional VAE (Sohn et al., 2015) that generates a target from a condition vector.

    The encoder q(z|x,c) and the prior p(z|c) are MLPs giving diagonal Gaussians (the prior
    may instead be N(0, I)); the decoder p(x|z,c) is a Gaussian with mean ``decoder([z, c])``
    and a fixed standard deviation ``obs_sigma``. The default decoder is an MLP over the
    flattened target; any module mapping (B, L + E) to (B, *target_shape) can replace it, for
    example a :class:`ConditionalDecoder` built with ``cond_dim=latent_dim + cond_dim``.

    ``forward`` decodes a posterior latent: the given ``noise``; else a fresh draw in training
    mode and the posterior mean in eval mode (deterministic). ``sample`` draws z from the
    prior and decodes it.

    Args:
        target_shape: Per-sample target: (D,), (T, D) or (C, H, W).
        cond_dim: Size E of the condition vector.
        latent_dim: Size L of z.
        hidden_dim: Width of the MLPs.
        prior: ``"learned"`` (conditional prior p(z|c)) or ``"standard"`` (N(0, I)).
        obs_sigma: Standard deviation of p(x|z,c), which weighs reconstruction against KL.
        decoder: Optional replacement decoder.

    Shape:
        - x: (B, *target_shape); cond: (B, E); noise: (B, L)
        - output: :class:`CVAEOutput`; ``sample``: (B, *target_shape)

    Example:
        >>> vae = CVAEHead((1, 8, 8), cond_dim=10, latent_dim=4)
        >>> vae.sample(torch.randn(3, 10), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        target_shape: Sequence[int] | int,
        cond_dim: int,
        latent_dim: int,
        *,
        hidden_dim: int = 256,
        prior: str = "learned",
        obs_sigma: float = 1.0,
        decoder: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.target_shape = shape = _target_shape(target_shape, owner=self)
        check_size(cond_dim, owner=self, arg="cond_dim")
        check_size(latent_dim, owner=self, arg="latent_dim")
        check_size(hidden_dim, owner=self, arg="hidden_dim")
        check_positive(obs_sigma, owner=self, arg="obs_sigma")
        check_choice(prior, PRIORS, owner=self, arg="prior")
        if decoder is not None and not isinstance(decoder, nn.Module):
            raise TypeError(
                f"CVAEHead: expected `decoder` to be an nn.Module, got {type(decoder).__name__}."
            )
        self.cond_dim, self.latent_dim = int(cond_dim), int(latent_dim)
        self.numel = 1
        for s in shape:
            self.numel *= s
        self.prior, self.obs_sigma = prior, float(obs_sigma)
        numel = self.numel
        self.encoder = _mlp(numel + cond_dim, hidden_dim, 2 * latent_dim, dd)
        self.prior_net = _mlp(cond_dim, hidden_dim, 2 * latent_dim, dd) if prior == "learned" \
            else None
        self.custom_decoder = decoder is not None
        self.decoder = decoder if decoder is not None else \
            _mlp(latent_dim + cond_dim, hidden_dim, numel, dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nets = [self.encoder, self.prior_net] + ([] if self.custom_decoder else [self.decoder])
        for net in nets:
            if net is None:
                continue
            for layer in net.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        reset = getattr(self.decoder, "reset_parameters", None)
        if self.custom_decoder and callable(reset):
            reset()

    # ------------------------------------------------------------------------- pieces

    def _check_cond(self, cond: Tensor, batch: int | None = None) -> int:
        sizes: dict[str, Any] = {"E": self.cond_dim} | ({"B": batch} if batch is not None else {})
        return check_tensor(cond, "B E", owner=self, arg="cond", **sizes)["B"]

    def prior_params(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(z|c), each (B, L)."""
        self._check_cond(cond)
        check_inputs(self, {"cond": cond})
        if self.prior_net is None:
            zeros = cond.new_zeros(cond.shape[0], self.latent_dim)
            return zeros, zeros
        mean, logvar = self.prior_net(cond).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor, cond: Tensor) -> Tensor:
        """The mean of p(x|z,c), (B, *target_shape)."""
        out = self.decoder(torch.cat([z, cond], dim=-1))  # (B, numel) or (B, *target)
        return out.reshape(z.shape[0], *self.target_shape)

    # ------------------------------------------------------------------------- API

    def forward(self, x: Tensor, cond: Tensor, noise: Tensor | None = None) -> CVAEOutput:
        batch = check_target(x, self.target_shape, owner=self, arg="x")
        self._check_cond(cond, batch)
        if noise is not None:
            check_tensor(noise, "B L", owner=self, arg="noise", B=batch, L=self.latent_dim)
        check_inputs(self, {"x": x, "cond": cond, "noise": noise})
        h = self.encoder(torch.cat([x.reshape(batch, self.numel), cond], dim=-1))  # (B, 2L)
        mean, logvar = h.chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)
        pmean, plogvar = self.prior_params(cond)
        if noise is None and self.training:
            noise = torch.randn_like(mean)
        z = mean if noise is None else reparameterize(mean, logvar, noise)
        out = (self.decode(z, cond), mean, logvar, pmean, plogvar, z)
        return CVAEOutput(*(feature_output(t) for t in out))  # features follow autocast

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def loss(self, x: Tensor, cond: Tensor, *, beta: float = 1.0, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> CVAELoss:
        """Negative ELBO split into its reconstruction and KL parts (see :class:`CVAELoss`).

        ``noise`` (B, L) fixes the posterior draw; by default it is drawn fresh (also in eval
        mode, so the value is a one-sample estimate), from ``generator`` if given.
        """
        check_positive(beta, owner=self, arg="beta", allow_zero=True)
        batch = check_target(x, self.target_shape, owner=self, arg="x")
        check_loss_batch(batch, owner=self, arg="x")
        if noise is None:
            noise = draw_normal((batch, self.latent_dim), device=x.device, dtype=x.dtype,
                                generator=generator)
        out = self(x, cond, noise=noise)
        work = torch.promote_types(x.dtype, torch.float32)
        err = (x.to(work) - out.reconstruction.to(work)).square().reshape(x.shape[0], self.numel)
        recon = (err.sum(-1) / (2 * self.obs_sigma**2)).mean()
        if self.prior_net is None:
            kl = gaussian_kl(out.mean, out.logvar).mean()
        else:
            kl = gaussian_kl(out.mean, out.logvar, out.prior_mean, out.prior_logvar).mean()
        return CVAELoss(recon + beta * kl, recon, kl)

    @torch.no_grad()
    def sample(self, cond: Tensor, *, generator: torch.Generator | None = None,
               temperature: float = 1.0, noise: Tensor | None = None) -> Tensor:
        """Draw targets for each condition: ``z ~ p(z|c)`` (std scaled by ``temperature``),
        decoded to the mean of p(x|z,c).

        Deterministic given ``generator`` (drawn on its device, so a CPU generator gives the same
        result on any device) or ``noise`` (B, L). Output on ``cond``'s device and dtype.
        """
        batch = self._check_cond(cond)
        check_positive(temperature, owner=self, arg="temperature", allow_zero=True)
        if noise is None:
            noise = draw_normal((batch, self.latent_dim), device=cond.device, dtype=cond.dtype,
                                generator=generator)
        else:
            check_tensor(noise, "B L", owner=self, arg="noise", B=batch, L=self.latent_dim)
            check_same_device({"cond": cond, "noise": noise}, owner=self)  # cast to cond's dtype
        pmean, plogvar = self.prior_params(cond)
        z = reparameterize(pmean, plogvar, temperature * noise.to(cond.dtype))
        return self.decode(z, cond)

    def extra_repr(self) -> str:
        return (f"target_shape={self.target_shape}, cond_dim={self.cond_dim}, "
                f"latent_dim={self.latent_dim}, prior={self.prior!r}, obs_sigma={self.obs_sigma}")
