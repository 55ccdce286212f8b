"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .fusion import fill_absent
from .generative import (
    ConsistencyScore,
    alphas_cumprod,
    beta_schedule,
    classifier_free_guidance,
    consistency_score,
    cosine_beta_schedule,
    ddim_step,
    ddpm_step,
    gaussian_kl,
    linear_beta_schedule,
    posterior_mean_variance,
    predict_start,
    q_sample,
    reparameterize,
    timestep_embedding,
    v_target,
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
    "fill_absent",
    "gaussian_kl",
    "linear_beta_schedule",
    "posterior_mean_variance",
    "predict_start",
    "q_sample",
    "reparameterize",
    "timestep_embedding",
    "v_target",
]
