"""A conditional diffusion head: denoiser, noise schedules, DDPM/DDIM/DPM-Solver++ samplers,
x0 clipping and dynamic thresholding, guidance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..._checks import (
    check_choice,
    check_inputs,
    check_positive,
    check_probability,
    check_same_device,
    check_size,
    check_tensor,
    owner_name,
)
from ..._precision import feature_output
from ...functional import (
    alphas_cumprod,
    beta_schedule,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    ddpm_vlb_term,
    dpm_solver_2m_step,
    dynamic_threshold,
    predict_start,
    q_sample,
    timestep_embedding,
    v_target,
)
from ._common import (
    check_labels,
    check_loss_batch,
    check_target,
    draw_normal,
    draw_uniform,
)
from ._common import target_shape as _target_shape
from ._denoiser import MLPDenoiser, UNetDenoiser, default_levels

__all__ = ["DiffusionHead"]

BACKBONES = ("mlp", "unet")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
VLB_WEIGHT = 1e-3  # lambda of Improved DDPM's hybrid objective


class DiffusionHead(nn.Module):
    """Conditional denoising diffusion over a target (vector, sequence or image), with DDPM,
    DDIM and DPM-Solver++(2M) sampling and classifier-free guidance.

    The sinusoidal timestep embedding and the projected condition are summed into one
    embedding that modulates every block of the denoiser with AdaLN-zero (zero-initialised, so
    each block starts as the identity, and the output layer starts at zero). The denoiser is
    ``backbone="mlp"``, a residual MLP over the flattened target (any target; fast, suits
    small targets of up to a few thousand values), or ``"unet"``, a small UNet of modulated
    residual conv blocks over images (C, H, W) or sequences (T, D) (convolving along T).

    Training (:meth:`loss`) draws ``t`` uniformly and the noise from N(0, I), and regresses
    eps or v (``prediction``) with a mean squared error in float32 (at least). With probability
    ``cond_dropout`` a sample's condition is replaced by the learned null condition, which
    gives the unconditional model used by classifier-free guidance at sampling time:
    ``out = uncond + guidance_scale * (cond - uncond)`` (1 = plain conditional sampling, no
    second pass). When the condition comes from :class:`ConditionEmbedding` with its own
    ``cond_dropout``, set this one to 0 and pass that module's null condition as ``uncond``.

    ``variance_type="learned_range"`` (Improved DDPM, Nichol & Dhariwal 2021) makes the
    denoiser also predict the variance of each DDPM step: its output has twice the target's
    first axis, ``(B, 2 S0, *rest)`` for a target ``(S0, *rest)``, the eps or v prediction
    first and then one value v per target element, which sets the step's variance to
    ``exp(frac log beta_t + (1 - frac) log beta-tilde_t)``, ``frac = (v + 1) / 2`` (see
    :func:`mmfuse.functional.ddpm_variance`). This is the layout of guided-diffusion and of
    diffusers' ``DDPMScheduler(variance_type="learned_range")``, whose ``step`` accepts the
    output as is. :meth:`loss` then adds the variance term of the hybrid objective,
    ``L_simple + lambda L_vlb`` with lambda = 0.001 (``vlb_weight``), and ``sampler="ddpm"``
    uses the learned variance; DDIM and DPM-Solver++ use only the prediction.

    The schedule is kept in float64 on the CPU and read as Python numbers while sampling, and the
    sampler's arithmetic runs in float32 at least; the denoiser runs in ``cond``'s dtype and
    the result comes back on ``cond``'s device and dtype. With a ``generator`` (or ``noise``)
    sampling is deterministic; a CPU generator gives the same draws for any device.

    Args:
        target_shape: Per-sample target: (D,), (T, D) or (C, H, W).
        cond_dim: Size E of the condition vector.
        hidden_dim: Width of the MLP denoiser and of the timestep/condition embedding.
        num_blocks: Residual blocks of the MLP; blocks per level of the UNet.
        num_steps: Diffusion steps T of the training process.
        schedule: ``"cosine"`` (Nichol & Dhariwal), ``"linear"`` (DDPM), ``"scaled_linear"``
            (latent diffusion) or ``"sigmoid"`` (GeoDiff) betas; see
            :func:`mmfuse.functional.beta_schedule`.
        beta_start, beta_end: Range of the linear-family schedules (None: each schedule's
            default, DDPM's 1e-4 to 0.02, or 0.00085 to 0.012 for ``"scaled_linear"``).
        rescale_linear: ``"linear"`` only: scale the betas by 1000 / num_steps (the default, so
            a short chain still ends near pure noise; at ``num_steps=1000`` nothing changes).
            False gives diffusers' unscaled ``"linear"``.
        prediction: ``"eps"`` (noise) or ``"v"`` (Salimans & Ho) parameterisation.
        variance_type: The DDPM sampler's default variance: ``"fixed_small"`` (the posterior
            variance), ``"fixed_large"`` (beta), or ``"learned_range"`` (predicted by the
            denoiser, which then has the extra output described above).
        cond_dropout: Probability of the null condition in :meth:`loss` (training mode).
        backbone: ``"mlp"`` or ``"unet"``.
        unet_channels: Width of the UNet (``backbone="unet"``).
        levels: UNet downsamplings; default the largest k <= 2 with ``2^k`` dividing the
            spatial sizes, which must be divisible by ``2^levels``.

    Shape:
        - forward: x: (B, *target_shape) noisy input; t: (B,) integer steps in [0, T);
          cond: (B, E); drop: (B,) bool, True = use the null condition
        - output: (B, *target_shape) the predicted eps or v; with
          ``variance_type="learned_range"`` (B, 2 S0, *rest), the prediction concatenated
          with the variance values along dim 1

    Example:
        >>> head = DiffusionHead((1, 8, 8), cond_dim=16, num_steps=100)
        >>> c = torch.randn(2, 16)
        >>> head.sample(c, steps=10, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        target_shape: Sequence[int] | int,
        cond_dim: int,
        *,
        hidden_dim: int = 256,
        num_blocks: int = 4,
        num_steps: int = 1000,
        schedule: str = "cosine",
        beta_start: float | None = None,
        beta_end: float | None = None,
        rescale_linear: bool = True,
        prediction: str = "eps",
        variance_type: str = "fixed_small",
        cond_dropout: float = 0.1,
        backbone: str = "mlp",
        unet_channels: int = 64,
        levels: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.target_shape = shape = _target_shape(target_shape, owner=self)
        for arg, value in (("cond_dim", cond_dim), ("hidden_dim", hidden_dim),
                           ("num_blocks", num_blocks), ("num_steps", num_steps)):
            check_size(value, owner=self, arg=arg)
        check_choice(schedule, SCHEDULES, owner=self, arg="schedule")
        check_choice(prediction, PREDICTIONS, owner=self, arg="prediction")
        check_choice(variance_type, VARIANCE_TYPES, owner=self, arg="variance_type")
        check_choice(backbone, BACKBONES, owner=self, arg="backbone")
        check_size(unet_channels, owner=self, arg="unet_channels")
        if backbone == "unet":
            if len(shape) == 1:
                raise ValueError(
                    f"{owner_name(self)}: expected an image (C, H, W) or sequence (T, D) "
                    f"`target_shape` for backbone='unet', got {shape}."
                )
            spatial = shape[1:] if len(shape) == 3 else shape[:1]
            if levels is None:
                levels = default_levels(spatial)
            check_size(levels, owner=self, arg="levels", allow_zero=True)
            if any(s % 2**levels for s in spatial):
                raise ValueError(
                    f"{owner_name(self)}: expected spatial sizes {spatial} of `target_shape` "
                    f"divisible by 2**levels={2**levels}, got {shape}."
                )
        check_positive(cond_dropout, owner=self, arg="cond_dropout", allow_zero=True)
        if cond_dropout >= 1:
            raise ValueError(
                f"{owner_name(self)}: expected `cond_dropout` in [0, 1), got {cond_dropout!r}."
            )
        self.cond_dim, self.hidden_dim = int(cond_dim), int(hidden_dim)
        self.num_steps, self.schedule, self.prediction = int(num_steps), schedule, prediction
        self.cond_dropout = float(cond_dropout)
        self.variance_type = variance_type
        self.learn_variance = variance_type == "learned_range"
        # what the denoiser returns: the prediction, then (learned_range) the variance values
        self.output_shape = (2 * shape[0], *shape[1:]) if self.learn_variance else shape
        numel = 1
        for s in shape:
            numel *= s
        self.numel = numel
        # Derived from the configuration, kept out of the state_dict and off the device.
        self.betas = beta_schedule(schedule, num_steps, beta_start=beta_start, beta_end=beta_end,
                                   rescale=rescale_linear)  # (T,) float64, CPU
        self.beta_start, self.beta_end, self.rescale_linear = beta_start, beta_end, rescale_linear
        self.alphas_bar = alphas_cumprod(self.betas)  # (T,) float64, CPU
        self._ab = self.alphas_bar.tolist()

        self.time_mlp = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim, **dd), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim, **dd)
        )
        self.cond_proj = nn.Linear(cond_dim, hidden_dim, **dd)
        self.null_cond = nn.Parameter(torch.empty(cond_dim, **dd))
        self.backbone = backbone
        self.net: nn.Module
        # learned_range: twice the output channels along the first target axis (the
        # prediction, then the variance values)
        factor = 2 if self.learn_variance else 1
        if backbone == "mlp":
            self.net = MLPDenoiser(shape, hidden_dim, num_blocks, factor, **dd)
        else:
            self.net = UNetDenoiser(shape, unet_channels, hidden_dim, num_blocks, levels or 0,
                                    factor, **dd)
        self.levels = levels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (*self.time_mlp, self.cond_proj):
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        nn.init.normal_(self.null_cond, std=1.0)
        self.net.reset_parameters()  # type: ignore[operator]

    # ------------------------------------------------------------------------- denoiser

    def _check_cond(self, cond: Tensor, batch: int | None = None) -> int:
        sizes: dict[str, Any] = {"E": self.cond_dim} | ({"B": batch} if batch is not None else {})
        return check_tensor(cond, "B E", owner=self, arg="cond", **sizes)["B"]

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, drop: Tensor | None = None) -> Tensor:
        batch = check_target(x, self.target_shape, owner=self, arg="x")
        check_labels(t, owner=self, arg="t", batch=batch, what="timesteps")
        self._check_cond(cond, batch)
        if drop is not None:
            check_tensor(drop, "B", owner=self, arg="drop", floating=False, B=batch)
        check_inputs(self, {"x": x, "t": t, "cond": cond, "drop": drop})
        if drop is not None:
            cond = torch.where(drop[:, None], self.null_cond.to(cond.dtype), cond)
        return feature_output(self._denoise(x, t, cond))  # features follow autocast

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def _denoise(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        temb = timestep_embedding(t, self.hidden_dim).to(x.dtype)  # (B, H)
        emb = self.time_mlp(temb) + self.cond_proj(cond)  # (B, H)
        out = self.net(x, emb)  # (B, *output_shape)
        check_target(out, self.output_shape, owner=self, arg="denoiser output",
                     batch=x.shape[0])
        return out

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """The denoiser output as (prediction, variance values or None)."""
        if not self.learn_variance:
            return out, None
        pred, var = out.chunk(2, dim=1)
        return pred, var

    # ------------------------------------------------------------------------- training

    def loss(
        self,
        x0: Tensor,
        cond: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        drop: Tensor | None = None,
        vlb_weight: float | None = None,
    ) -> Tensor:
        """Denoising loss: mean squared error of the eps or v prediction, a scalar in float32
        (float64 for float64 inputs).

        ``t``, ``noise`` and ``drop`` default to random draws (from ``generator`` if given);
        the condition is dropped at rate ``cond_dropout`` only in training mode.

        With ``variance_type="learned_range"`` this is Improved DDPM's hybrid objective
        ``L_simple + vlb_weight * T * mean(L_t)``: ``L_t`` is
        :func:`mmfuse.functional.ddpm_vlb_term` (bits per dimension) at the drawn steps with
        the mean's gradient stopped, so it trains only the variance values (``T L_t``
        estimates ``L_vlb``; ``vlb_weight`` defaults to the paper's 0.001). The decoder term
        at ``t = 0`` is left out (it is 0): it assumes 8-bit data in [-1, 1], and the sampler
        never uses the variance of the last step. ``vlb_weight=0`` trains the prediction
        only. Heads with a fixed variance take no ``vlb_weight``.
        """
        batch = check_target(x0, self.target_shape, owner=self, arg="x0")
        check_loss_batch(batch, owner=self, arg="x0")
        self._check_cond(cond, batch)
        check_inputs(self, {"x0": x0, "cond": cond})
        if vlb_weight is not None:
            if not self.learn_variance:
                raise ValueError(
                    f"{owner_name(self)}: expected no `vlb_weight` for variance_type="
                    f"{self.variance_type!r} (it weights the learned variance's term), "
                    f"got {vlb_weight!r}."
                )
            check_positive(vlb_weight, owner=self, arg="vlb_weight", allow_zero=True)
        weight = (VLB_WEIGHT if vlb_weight is None else float(vlb_weight)) \
            if self.learn_variance else 0.0
        device, work = x0.device, torch.promote_types(x0.dtype, torch.float32)
        if t is None:
            t = (draw_uniform((batch,), device=device, generator=generator) * self.num_steps)
            t = t.long().clamp(max=self.num_steps - 1)
        else:
            check_labels(t, owner=self, arg="t", batch=batch, what="timesteps")
        if noise is None:
            noise = draw_normal(x0.shape, device=device, dtype=work, generator=generator)
        else:
            check_target(noise, self.target_shape, owner=self, arg="noise", batch=batch)
        if drop is None and self.training and self.cond_dropout > 0:
            drop = draw_uniform((batch,), device=device, generator=generator) < self.cond_dropout
        abar = self.alphas_bar.to(device=device, dtype=work)
        ab = abar[t]  # (B,)
        x0f, noise = x0.to(work), noise.to(work)
        x_t = q_sample(x0f, noise, ab)
        out, var = self._split(self(x_t.to(x0.dtype), t, cond, drop=drop).to(work))
        target = noise if self.prediction == "eps" else v_target(x0f, noise, ab)
        loss = (out - target).square().mean()
        if var is None or weight == 0:
            return loss
        ab_prev = torch.where(t > 0, abar[(t - 1).clamp(min=0)], torch.ones_like(ab))  # (B,)
        x0_pred, _ = predict_start(x_t, out.detach(), ab, self.prediction)  # the mean frozen
        vlb = ddpm_vlb_term(x0f, x_t, x0_pred, ab, ab_prev, var)  # (B,) bits per dimension
        vlb = torch.where(t > 0, vlb, torch.zeros_like(vlb))  # no decoder term at t = 0
        return loss + weight * self.num_steps * vlb.mean()

    # ------------------------------------------------------------------------- sampling

    def timesteps(self, steps: int | None = None) -> list[int]:
        """The descending steps a sampler visits: ``steps`` evenly spaced values from T - 1 to 0
        (all T by default)."""
        n = self.num_steps if steps is None else steps
        if not isinstance(n, int):
            raise ValueError(f"{owner_name(self)}: expected `steps` to be an int or None, got {n!r}.")
        check_size(n, owner=self, arg="steps")
        if n > self.num_steps:
            raise ValueError(
                f"{owner_name(self)}: expected `steps` <= num_steps={self.num_steps}, got {n}."
            )
        grid = torch.linspace(self.num_steps - 1, 0, n, dtype=torch.float64).round().long()
        return list(dict.fromkeys(grid.tolist()))

    def _model_out(self, x: Tensor, t: int, cond: Tensor, uncond: Tensor | None,
                   scale: float, work: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Denoiser prediction at integer step ``t``, guided if ``scale != 1``, and the
        variance values (learned_range; from the conditional pass), in ``work``."""
        batch = x.shape[0]
        x = x.to(cond.dtype)
        tt = torch.full((batch,), t, device=x.device, dtype=torch.long)
        if scale == 1.0:
            return self._split(self._denoise(x, tt, cond).to(work))
        null = uncond.to(cond.dtype) if uncond is not None else \
            self.null_cond.to(cond.dtype).expand_as(cond)
        out = self._denoise(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null]))
        c_out, u_out = out.to(work).chunk(2)
        (c_pred, c_var), (u_pred, _) = self._split(c_out), self._split(u_out)
        return classifier_free_guidance(c_pred, u_pred, scale), c_var

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        *,
        sampler: str = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        uncond: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        clip_x0: tuple[float, float] | None = None,
        dynamic_threshold_ratio: float | None = None,
        threshold_max: float | None = None,
        variance_type: str | None = None,
    ) -> Tensor:
        """Generate one target per condition.

        Args:
            cond: (B, E) conditions.
            sampler: ``"ddim"`` (Song et al.; ``eta=0`` deterministic), ``"ddpm"``
                (ancestral, the posterior q(x_prev | x_t, x0_pred) between visited steps) or
                ``"dpmpp_2m"`` (DPM-Solver++(2M), Lu et al. 2022: deterministic, second order,
                good samples in 10 to 25 steps; diffusers' ``DPMSolverMultistepScheduler``).
            steps: Number of denoiser evaluations (None: all T steps).
            eta: DDIM's noise scale (0 deterministic, 1 DDPM-like).
            guidance_scale: Classifier-free guidance weight; 1 is plain conditional sampling.
            uncond: (B, E) unconditional condition for guidance; default the learned null.
            generator: Seeds the initial noise and any sampler noise.
            noise: (B, *target_shape) initial x_T instead of a draw (e.g. from
                :meth:`ddim_invert`).
            clip_x0: Clamp the predicted x0 to this range at each step (e.g. ``(-1, 1)`` for
                data scaled to that range).
            dynamic_threshold_ratio: Dynamic thresholding of the predicted x0 at each step
                (Saharia et al. 2022): the per-sample quantile of ``|x0|`` at this ratio (e.g.
                0.995), clamped to ``[1, threshold_max]``, bounds and rescales x0; see
                :func:`mmfuse.functional.dynamic_threshold`. Not together with ``clip_x0``.
            threshold_max: Upper bound of the threshold (None: no bound, as Imagen; diffusers'
                ``sample_max_value``).
            variance_type: ``"ddpm"`` only: ``"fixed_small"`` (the posterior variance),
                ``"fixed_large"`` (beta) or ``"learned_range"`` (the denoiser's, for a head
                built with it); None: the head's ``variance_type``. See
                :func:`mmfuse.functional.ddpm_variance`. With guidance, the variance values
                come from the conditional pass.

        Returns:
            (B, *target_shape) on ``cond``'s device and dtype. No gradients are recorded.
        """
        batch = self._check_cond(cond)
        check_choice(sampler, SAMPLERS, owner=self, arg="sampler")
        check_positive(eta, owner=self, arg="eta", allow_zero=True)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or (
            not math.isfinite(guidance_scale)
        ):
            raise ValueError(
                f"{owner_name(self)}: expected `guidance_scale` to be a finite number, "
                f"got {guidance_scale!r}."
            )
        if clip_x0 is not None and not (
            isinstance(clip_x0, (tuple, list)) and len(clip_x0) == 2
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip_x0)
            and clip_x0[0] < clip_x0[1]  # NaN fails
        ):
            raise ValueError(
                f"{owner_name(self)}: expected `clip_x0` to be a (low, high) pair of numbers "
                f"with low < high, got {clip_x0!r}."
            )
        if variance_type is None:
            variance_type = self.variance_type
        check_choice(variance_type, VARIANCE_TYPES, owner=self, arg="variance_type")
        if variance_type == "learned_range" and not self.learn_variance:
            raise ValueError(
                f"{owner_name(self)}: expected a head built with variance_type='learned_range' "
                f"to sample with it, got a head with variance_type={self.variance_type!r}."
            )
        if dynamic_threshold_ratio is not None:
            if clip_x0 is not None:
                raise ValueError(f"{owner_name(self)}: expected `clip_x0` or "
                                 f"`dynamic_threshold_ratio`, not both.")
            check_probability(dynamic_threshold_ratio, owner=self,
                              arg="dynamic_threshold_ratio", closed=True)
        if threshold_max is not None:
            check_positive(threshold_max, owner=self, arg="threshold_max")
            if threshold_max < 1:
                raise ValueError(f"{owner_name(self)}: expected `threshold_max` >= 1, "
                                 f"got {threshold_max!r}.")
        if uncond is not None:
            check_tensor(uncond, "B E", owner=self, arg="uncond", B=batch, E=self.cond_dim)
        check_same_device({"cond": cond, "uncond": uncond, "noise": noise}, owner=self)
        check_inputs(self, {"cond": cond, "uncond": uncond})
        device, dtype = cond.device, cond.dtype
        work = torch.promote_types(dtype, torch.float32)  # the sampler's arithmetic
        shape = (batch, *self.target_shape)
        if noise is None:
            x = draw_normal(shape, device=device, dtype=work, generator=generator)
        else:
            check_target(noise, self.target_shape, owner=self, arg="noise", batch=batch)
            x = noise.to(device=device, dtype=work)
        ts = self.timesteps(steps)
        history: tuple[Tensor, float] | None = None  # DPM-Solver++: (x0, alpha_bar) of the last step
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            ab, ab_prev = self._ab[t], (self._ab[prev] if prev >= 0 else 1.0)
            out, var = self._model_out(x, t, cond, uncond, guidance_scale, work)
            x0, eps = predict_start(x, out, ab, self.prediction)
            if clip_x0 is not None or dynamic_threshold_ratio is not None:
                x0 = x0.clamp(*clip_x0) if clip_x0 is not None else \
                    dynamic_threshold(x0, dynamic_threshold_ratio or 0.0, threshold_max)
                eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
            last = prev < 0
            if sampler == "dpmpp_2m":
                x = dpm_solver_2m_step(x, x0, ab, ab_prev, *(history or (None, None)))
                history = (x0, ab)
            elif sampler == "ddim":
                z = None if last or eta == 0 else \
                    draw_normal(shape, device=device, dtype=work, generator=generator)
                x = ddim_step(x0, eps, ab, ab_prev, eta, z)
            else:
                z = None if last else \
                    draw_normal(shape, device=device, dtype=work, generator=generator)
                x = ddpm_step(x0, x, ab, ab_prev, z, variance_type=variance_type,
                              predicted_variance=var if variance_type == "learned_range"
                              else None)
        return x.to(dtype)

    @torch.no_grad()
    def ddim_invert(self, x0: Tensor, cond: Tensor, *, steps: int | None = 50,
                    guidance_scale: float = 1.0, uncond: Tensor | None = None) -> Tensor:
        """Run deterministic DDIM backwards: data to the x_T that ``sample(noise=x_T, eta=0)``
        maps back to it (up to the discretisation error, which vanishes as ``steps`` grows).

        Returns (B, *target_shape) noise on ``x0``'s device, in float32 (float64 for float64
        inputs); no gradients are recorded.

        Conditioning: each step reads x0 back from the model's estimate at the current
        ``alpha_bar``. With eps-prediction and the cosine schedule, whose last ``alpha_bar`` is
        about 1e-9, that read divides by ~3e-5 and the round trip breaks down; use
        ``prediction="v"`` or the linear schedule when inversion matters.
        """
        batch = check_target(x0, self.target_shape, owner=self, arg="x0")
        self._check_cond(cond, batch)
        ts = self.timesteps(steps)[::-1]  # ascending
        work = torch.promote_types(x0.dtype, torch.float32)
        x = x0.to(work)
        prev_ab, prev_t = 1.0, ts[0]
        for t in ts:
            # eps is read where the state is; the clean data is read at the first step.
            out, _ = self._model_out(x, prev_t, cond, uncond, guidance_scale, work)
            x0_pred, eps = predict_start(x, out, self._ab[prev_t], self.prediction)
            if prev_ab == 1.0:
                x0_pred = x
            ab = self._ab[t]
            x = ab**0.5 * x0_pred + (1 - ab) ** 0.5 * eps
            prev_ab, prev_t = ab, t
        return x

    def extra_repr(self) -> str:
        return (f"target_shape={self.target_shape}, cond_dim={self.cond_dim}, "
                f"hidden_dim={self.hidden_dim}, backbone={self.backbone!r}, "
                f"num_steps={self.num_steps}, "
                f"schedule={self.schedule!r}, prediction={self.prediction!r}, "
                + ("" if self.variance_type == "fixed_small" else
                   f"variance_type={self.variance_type!r}, ")
                + ("" if self.schedule != "linear" or self.rescale_linear else
                   "rescale_linear=False, ") +
                f"cond_dropout={self.cond_dropout}")
