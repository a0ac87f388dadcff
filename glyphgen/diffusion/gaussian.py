"""Gaussian diffusion with a choice of parameterization, learned variance and the hybrid loss.

Written from the math of improved DDPM (Nichol & Dhariwal 2021):
- forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I);
- posterior q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, beta~_t I) with
  beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t);
- the model outputs its parameterization's prediction (eps, v or x0: see parameterization.py) and,
  with `learn_sigma`, a value in [-1, 1] that interpolates the log-variance between log beta~_t (-1)
  and log beta_t (1);
- hybrid loss: the (optionally min-SNR weighted) MSE of the prediction + lambda * L_vlb, where the VLB
  sees a detached mean, so it only trains the variance. L_vlb sums T per-step terms; the per-sample
  estimate of one term is scaled by T.

The network is any callable `model(x_t, t, **model_kwargs) -> [B, 2C or C, H, W]`; `t` holds the
timestep indices of the trained (un-respaced) diffusion. This module never looks inside
`model_kwargs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from glyphgen.diffusion.parameterization import Parameterization, dynamic_threshold
from glyphgen.diffusion.schedule import DiffusionConfig, make_betas, space_timesteps

Model = Callable[..., Tensor]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp()
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) for x in [-1, 1] quantized to 256 levels under N(mean, e^(2 log_scale)), elementwise.

    Each level owns a bin of width 2/255; the outermost bins extend to -inf / +inf."""
    inv_std = (-log_scale).exp()
    upper = (x - mean + 1 / 255) * inv_std
    lower = (x - mean - 1 / 255) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    mid = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, mid))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


class GaussianDiffusion:
    """Diffusion over `len(betas)` steps. A respaced diffusion (see `respace`) has fewer, larger
    steps and a `timestep_map` that turns its step indices into the trained model's."""

    def __init__(
        self,
        betas: Tensor,
        learn_sigma: bool = True,
        vlb_weight: float = 0.001,
        timestep_map: Tensor | None = None,
        parameterization: str = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
    ):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.learn_sigma = learn_sigma
        self.vlb_weight = vlb_weight
        self.parameterization = Parameterization(parameterization)
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.num_steps = len(betas)
        self.timestep_map = torch.arange(self.num_steps) if timestep_map is None else timestep_map.long()

        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        # beta~_0 is 0; the log-variance uses beta~_1 there (beta_0 for a 1-step diffusion).
        variance_floor = posterior_variance.clone()
        variance_floor[0] = posterior_variance[1] if self.num_steps > 1 else betas[0]
        # Fixed variance when the model does not learn it: beta_t ("fixed large"), same floor at t=0.
        fixed_variance = torch.cat([variance_floor[:1], betas[1:]])
        self._arrays = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
            "snr": abar / (1 - abar),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": variance_floor.log(),
            "posterior_mean_coef_x0": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_mean_coef_xt": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
            "log_betas": betas.log(),
            "fixed_log_variance": fixed_variance.log(),
        }
        self._on_device: dict[tuple[str, torch.device], Tensor] = {}

    def array(self, name: str) -> Tensor:
        """One of the float64 schedule arrays (betas, alphas_cumprod, posterior_variance, ...)."""
        return self._arrays[name]

    def coefficient(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """array[name][t] shaped to broadcast against `like`, in its dtype. Arrays are copied to each
        device once, so indexing with a `t` already on the device costs no host-device copy."""
        key = (name, like.device)
        if key not in self._on_device:
            dtype = torch.float32 if like.device.type == "mps" else torch.float64
            self._on_device[key] = self._arrays[name].to(like.device, dtype)
        values = self._on_device[key][t.to(like.device)].to(like.dtype)
        return values.view(-1, *[1] * (like.ndim - 1))

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The trained model's timestep indices for this diffusion's step indices."""
        key = ("timestep_map", t.device)
        if key not in self._on_device:
            self._on_device[key] = self.timestep_map.to(t.device)
        return self._on_device[key][t]

    def sample_t(
        self,
        batch: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Timesteps drawn uniformly from [0, num_steps), int64 [batch], drawn from `generator`."""
        t = torch.randint(
            0, self.num_steps, (batch,), generator=generator, device=draw_device(generator, device)
        )
        return t.to(device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x_0)."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (
            self.coefficient("sqrt_alphas_cumprod", t, x0) * x0
            + self.coefficient("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and floored log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self.coefficient("posterior_mean_coef_x0", t, x_t) * x0
            + self.coefficient("posterior_mean_coef_xt", t, x_t) * x_t
        )
        return (
            mean,
            self.coefficient("posterior_variance", t, x_t),
            self.coefficient("posterior_log_variance_clipped", t, x_t),
        )

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps implied by x_t and x_0. Where alpha_bar is 0 (a zero-terminal-SNR schedule's last
        step) x_t is the noise itself."""
        eps = (self.coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self.coefficient(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )
        return torch.where(self.coefficient("alphas_cumprod", t, x_t) == 0, x_t, eps)

    def p_from_output(
        self, output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True, threshold: float = 0.0
    ) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from a raw model output: "mean", "variance", "log_variance", "pred_x0"
        and "eps" (unclipped). `clip_denoised` clips the predicted x_0 to the data range: to [-1, 1],
        or by dynamic thresholding at quantile `threshold` when it is above 0."""
        channels = x_t.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if output.shape[1] != expected:
            raise ValueError(
                f"model output has {output.shape[1]} channels, expected {expected} "
                f"(learn_sigma={self.learn_sigma}, {channels} image channels)"
            )
        prediction = output[:, :channels]
        if self.learn_sigma:
            frac = (output[:, channels:] + 1) / 2
            log_variance = frac * self.coefficient("log_betas", t, x_t) + (1 - frac) * self.coefficient(
                "posterior_log_variance_clipped", t, x_t
            )
        else:
            log_variance = self.coefficient("fixed_log_variance", t, x_t).expand_as(x_t)
        pred_x0 = self.parameterization.x0(prediction, x_t, t, self)
        eps = self.parameterization.eps(prediction, x_t, t, self)
        if clip_denoised:
            pred_x0 = dynamic_threshold(pred_x0, threshold)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {
            "mean": mean,
            "variance": log_variance.exp(),
            "log_variance": log_variance,
            "pred_x0": pred_x0,
            "eps": eps,
        }

    def p_mean_variance(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = True,
        threshold: float = 0.0,
    ) -> dict[str, Tensor]:
        """Run the model at this diffusion's step `t` and return `p_from_output`'s dict."""
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        return self.p_from_output(output, x_t, t, clip_denoised, threshold)

    def vlb_terms(self, output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term L_t in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for
        t > 0, the discretized Gaussian decoder NLL -log p(x_0 | x_1) at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_from_output(output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / math.log(2)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        return torch.where(t == 0, mean_flat(nll) / math.log(2), kl)

    def training_losses(
        self,
        model: Model,
        x0: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample hybrid loss terms [B]: "mse" (of the parameterization's target, unweighted),
        "vlb" (L_t in bits/dim, from the variance only) and "loss" = weight * mse + vlb_weight *
        num_steps * vlb (the weighted mse alone without learn_sigma, where "vlb" is still reported,
        without gradient). Average "loss" to get the training objective."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        channels = x0.shape[1]
        target = self.parameterization.target(x0, noise, t, self)
        mse = mean_flat((output[:, :channels] - target) ** 2)
        weighted = mse
        if self.loss_weighting != "uniform":
            snr = self.coefficient("snr", t, mse)
            weighted = mse * self.parameterization.loss_weight(snr, self.loss_weighting, self.min_snr_gamma)
        # The VLB must not move the mean (the MSE does that better): only the variance gets its gradient.
        frozen = torch.cat([output[:, :channels].detach(), output[:, channels:]], dim=1)
        vlb = self.vlb_terms(frozen, x0, x_t, t)
        if self.learn_sigma:
            loss = weighted + self.vlb_weight * self.num_steps * vlb
        else:
            vlb, loss = vlb.detach(), weighted
        return {"loss": loss, "mse": mse, "vlb": vlb}

    def respace(self, spec: str) -> GaussianDiffusion:
        """This diffusion restricted to the steps `space_timesteps(num_steps, spec)` keeps: betas are
        rebuilt so alphas_cumprod at the kept steps is unchanged, and the model still sees the
        original timestep indices, so a net trained on 1000 steps samples with e.g. 50."""
        kept = space_timesteps(self.num_steps, spec)
        abar = self._arrays["alphas_cumprod"][kept]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return GaussianDiffusion(
            1 - abar / abar_prev,
            learn_sigma=self.learn_sigma,
            vlb_weight=self.vlb_weight,
            timestep_map=self.timestep_map[kept],
            parameterization=self.parameterization.name,
            loss_weighting=self.loss_weighting,
            min_snr_gamma=self.min_snr_gamma,
        )


def augment_low_res(
    diffusion: GaussianDiffusion,
    low_res: Tensor,
    max_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Imagen noise-conditioning augmentation for superres training: noise each low-res image with
    q(x_t | x_0) at a timestep drawn uniformly from [0, max_fraction * num_steps). Returns the noised
    images and the timesteps (for the model to condition on, if it does); 0 leaves them unchanged."""
    batch = low_res.shape[0]
    if max_fraction <= 0:
        return low_res, torch.zeros(batch, dtype=torch.long, device=low_res.device)
    high = max(1, int(max_fraction * diffusion.num_steps))
    t = torch.randint(0, high, (batch,), generator=generator, device=draw_device(generator, low_res.device))
    t = t.to(low_res.device)
    noise = randn_from(low_res.shape, generator, low_res.device, low_res.dtype)
    return diffusion.q_sample(low_res, t, noise), t


def draw_device(generator: torch.Generator | None, device: torch.device | str | None):
    """Random numbers are drawn where the generator lives, so a seed means the same numbers."""
    return device if generator is None else generator.device


def randn_from(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise drawn from `generator` (on the generator's device, so a seed gives the
    same numbers whatever device the result goes to), returned on `device`."""
    return torch.randn(shape, generator=generator, device=draw_device(generator, device), dtype=dtype).to(
        device
    )


def create_diffusion(cfg: DiffusionConfig, steps_spec: str | None = None) -> GaussianDiffusion:
    """The diffusion `cfg` describes; respaced by `steps_spec` ("50", "ddim25", ...) when given,
    else the full `cfg.steps` diffusion used for training."""
    diffusion = GaussianDiffusion(
        make_betas(cfg.schedule, cfg.steps, cfg.zero_terminal_snr),
        learn_sigma=cfg.learn_sigma,
        vlb_weight=cfg.vlb_weight,
        parameterization=cfg.parameterization,
        loss_weighting=cfg.loss_weighting,
        min_snr_gamma=cfg.min_snr_gamma,
    )
    return diffusion if steps_spec is None else diffusion.respace(steps_spec)
