"""Pixel-space Gaussian diffusion: schedules, parameterizations, respacing, the hybrid loss, guidance
and samplers."""

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
from glyphgen.diffusion.options import SamplingOptions, sampling_fields, with_options
from glyphgen.diffusion.parameterization import (
    Parameterization,
    Prediction,
    Weighting,
    dynamic_threshold,
)
from glyphgen.diffusion.sampling import (
    SAMPLE_LOOPS,
    Progress,
    ddim_sample_loop,
    dpm_solver_pp_2m_loop,
    drop_text,
    guided,
    null_text_like,
    p_sample_loop,
    pad_tokens,
    sample,
)
from glyphgen.diffusion.schedule import (
    DiffusionConfig,
    Sampler,
    Schedule,
    cosine_betas,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    space_timesteps,
)

__all__ = [
    "SAMPLE_LOOPS",
    "SamplingOptions",
    "Parameterization",
    "Prediction",
    "Sampler",
    "Schedule",
    "Weighting",
    "dpm_solver_pp_2m_loop",
    "dynamic_threshold",
    "rescale_zero_terminal_snr",
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
    "sampling_fields",
    "space_timesteps",
    "with_options",
]
