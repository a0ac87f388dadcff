"""Pixel-space Gaussian diffusion: schedules, respacing, the hybrid loss, guidance and samplers."""

from __future__ import annotations

from glyphgen.diffusion.gaussian import (
    GaussianDiffusion,
    Model,
    augment_low_res,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    randn_from,
)
from glyphgen.diffusion.sampling import (
    Progress,
    ddim_sample_loop,
    drop_text,
    guided,
    null_text_like,
    p_sample_loop,
    pad_tokens,
    sample,
)
from glyphgen.diffusion.schedule import (
    SAMPLERS,
    SCHEDULES,
    DiffusionConfig,
    cosine_betas,
    linear_betas,
    make_betas,
    space_timesteps,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "DiffusionConfig",
    "GaussianDiffusion",
    "Model",
    "Progress",
    "augment_low_res",
    "cosine_betas",
    "create_diffusion",
    "ddim_sample_loop",
    "discretized_gaussian_log_likelihood",
    "drop_text",
    "guided",
    "linear_betas",
    "make_betas",
    "mean_flat",
    "normal_kl",
    "null_text_like",
    "p_sample_loop",
    "pad_tokens",
    "randn_from",
    "sample",
    "space_timesteps",
]
