"""Math of the conditional generator heads: diffusion (schedules, forward process,
sampler steps, guidance, timestep embeddings), Gaussian latents, and the consistency score."""

from __future__ import annotations

from .consistency import (
    ConsistencyScore,
    consistency_score,
)
from .diffusion import (
    alphas_cumprod,
    beta_schedule,
    classifier_free_guidance,
    cosine_beta_schedule,
    ddim_step,
    ddpm_step,
    ddpm_variance,
    ddpm_vlb_term,
    dpm_solver_2m_step,
    dynamic_threshold,
    linear_beta_schedule,
    posterior_mean_variance,
    predict_start,
    q_sample,
    scaled_linear_beta_schedule,
    sigmoid_beta_schedule,
    timestep_embedding,
    v_target,
)
from .latent import (
    gaussian_kl,
    reparameterize,
)

__all__ = [
    "ConsistencyScore",
    "alphas_cumprod",
    "beta_schedule",
    "classifier_free_guidance",
    "consistency_score",
    "cosine_beta_schedule",
    "ddim_step",
    "ddpm_step",
    "ddpm_variance",
    "ddpm_vlb_term",
    "dpm_solver_2m_step",
    "dynamic_threshold",
    "gaussian_kl",
    "linear_beta_schedule",
    "posterior_mean_variance",
    "predict_start",
    "q_sample",
    "reparameterize",
    "scaled_linear_beta_schedule",
    "sigmoid_beta_schedule",
    "timestep_embedding",
    "v_target",
]
