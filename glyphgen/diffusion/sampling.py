"""Classifier-free guidance and the samplers: ancestral DDPM, DDIM and DPM-Solver++(2M).

Guidance (Ho & Salimans 2022) is a wrapper around the network: the conditional and the null-text
branches run as one batch and their predictions combine as p_c + scale * (p_c - p_null), so scale 0
is the plain conditional model. The prediction may be eps, v or x0: each is affine in the others given
x_t, so combining any of them combines the epsilons alike. Guidance is the one place that knows the
text kwargs: `tokens` and `mask`, where the null transcript is [BOS, NULL, EOS].

Samplers run over a (usually respaced) `GaussianDiffusion`. Every random number comes from the
caller's `torch.Generator`, so a seed fixes the sample. Superres sampling is the same loop with
`low_res` in `model_kwargs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from glyphgen.diffusion.gaussian import GaussianDiffusion, Model, draw_device, randn_from
from glyphgen.diffusion.schedule import Sampler, check_guidance
from glyphgen.text.tokenizer import BOS, EOS, NULL, PAD

Progress = Callable[[int, int], None]
"""Called after each sampling step with (steps done, total steps)."""


def pad_tokens(x: Tensor, length: int) -> Tensor:
    """Right-pad [B, L, ...] to `length` along dim 1 with PAD (id 0; False for masks)."""
    if x.shape[1] >= length:
        return x
    out = x.new_full((x.shape[0], length, *x.shape[2:]), PAD)
    out[:, : x.shape[1]] = x
    return out


def null_text_like(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """A batch of null transcripts [BOS, NULL, EOS] (all unmasked) matching the batch size, device
    and dtypes of `tokens` / `mask`."""
    batch = tokens.shape[0]
    null = torch.tensor([BOS, NULL, EOS], dtype=tokens.dtype, device=tokens.device).expand(batch, 3)
    return null.clone(), torch.ones(batch, 3, dtype=mask.dtype, device=mask.device)


def drop_text(
    tokens: Tensor, mask: Tensor, p: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """For classifier-free guidance training: replace each sample's transcript by the null text with
    probability `p` (drawn from `generator`). The null text is padded to the batch's length (the
    batch grows to 3 tokens if it is shorter, so the null text keeps its EOS)."""
    length = max(tokens.shape[1], 3)
    tokens, mask = pad_tokens(tokens, length), pad_tokens(mask, length)
    null_tokens, null_mask = (pad_tokens(x, length) for x in null_text_like(tokens, mask))
    where = draw_device(generator, tokens.device)
    drop = (torch.rand(tokens.shape[0], generator=generator, device=where) < p).to(tokens.device)
    return torch.where(drop[:, None], null_tokens, tokens), torch.where(drop[:, None], null_mask, mask)


def _doubled_kwarg(cond: Any, null: Any | None, batch: int) -> Any:
    """A model kwarg for the doubled batch: cond followed by null (padded to a common length), or cond
    twice for kwargs that guidance leaves alone (e.g. `low_res`)."""
    if not isinstance(cond, Tensor) or cond.ndim == 0 or cond.shape[0] != batch:
        return cond
    if null is None:
        return torch.cat([cond, cond])
    null = null.expand(batch, *null.shape[1:]) if null.shape[0] == 1 else null
    if cond.ndim >= 2:
        length = max(cond.shape[1], null.shape[1])
        cond, null = pad_tokens(cond, length), pad_tokens(null, length)
    return torch.cat([cond, null.to(cond.device, cond.dtype)])


def guided(model: Model, scale: float, null_kwargs: dict[str, Tensor], rescale: float = 0.0) -> Model:
    """`model` with classifier-free guidance: p = p_c + scale * (p_c - p_null), from one batched
    forward of the conditional kwargs and the same kwargs with `null_kwargs` substituted (e.g.
    {"tokens", "mask"} from `null_text_like`). `rescale` (phi of Lin et al. 2024) blends p with p
    rescaled to p_c's per-sample standard deviation, which undoes the over-saturation of strong
    guidance. The variance channels come from the conditional branch. Scale 0 returns `model`
    itself: no unconditional pass at all."""
    if scale == 0:
        return model

    def forward(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        missing = set(null_kwargs) - set(kwargs)
        if missing:
            raise ValueError(f"guidance replaces {sorted(missing)} but the model kwargs lack them")
        batch, channels = x.shape[:2]
        doubled = {k: _doubled_kwarg(v, null_kwargs.get(k), batch) for k, v in kwargs.items()}
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), **doubled).chunk(2)
        pred = cond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
        if rescale > 0:
            dims = tuple(range(1, pred.ndim))
            ratio = cond[:, :channels].std(dim=dims, keepdim=True) / pred.std(dim=dims, keepdim=True)
            pred = rescale * pred * ratio + (1 - rescale) * pred
        return torch.cat([pred, cond[:, channels:]], dim=1)

    return forward


def _initial_noise(
    shape: Sequence[int],
    noise: Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> Tensor:
    return noise.to(device) if noise is not None else randn_from(tuple(shape), generator, device)


def _reverse_steps(
    diffusion: GaussianDiffusion, x: Tensor, progress: Progress | None
) -> Iterator[tuple[int, Tensor]]:
    """(i, t as a batch tensor) from i = T-1 down to 0, reporting progress after each step."""
    total = diffusion.num_steps
    for done, i in enumerate(reversed(range(total)), start=1):
        yield i, torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        if progress is not None:
            progress(done, total)


@torch.no_grad()
def p_sample_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    threshold: float = 0.0,
    progress: Progress | None = None,
) -> Tensor:
    """Ancestral DDPM sampling: x_{t-1} ~ p(x_{t-1} | x_t) from t = T-1 down to 0, starting at
    `noise` or at N(0, I) drawn from `generator`. Returns x_0 [B, C, H, W]."""
    x = _initial_noise(shape, noise, generator, device)
    for i, t in _reverse_steps(diffusion, x, progress):
        out = diffusion.p_mean_variance(model, x, t, model_kwargs, clip_denoised, threshold)
        x = out["mean"]
        if i > 0:  # the last step returns the mean
            x = x + (0.5 * out["log_variance"]).exp() * randn_from(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def ddim_sample_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    threshold: float = 0.0,
    progress: Progress | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021): x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} -
    sigma^2) eps_hat + sigma z, with sigma = eta * sqrt((1 - abar_{t-1}) / (1 - abar_t)) *
    sqrt(1 - abar_t / abar_{t-1}); eta = 0 is deterministic given the starting noise."""
    x = _initial_noise(shape, noise, generator, device)
    for i, t in _reverse_steps(diffusion, x, progress):
        out = diffusion.p_mean_variance(model, x, t, model_kwargs, clip_denoised, threshold)
        # eps consistent with the (clipped) x0 prediction, as in DDIM's reference implementation.
        eps = diffusion.predict_eps(x, t, out["pred_x0"])
        abar = diffusion.coefficient("alphas_cumprod", t, x)
        abar_prev = diffusion.coefficient("alphas_cumprod_prev", t, x)
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        x = abar_prev.sqrt() * out["pred_x0"] + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if i > 0 and eta > 0:
            x = x + sigma * randn_from(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def dpm_solver_pp_2m_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    threshold: float = 0.0,
    progress: Progress | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order solver of the diffusion ODE in
    its data-prediction form, over the steps of `diffusion`. With alpha = sqrt(abar), sigma =
    sqrt(1 - abar) and lambda = log(alpha / sigma), one step from s to t with h = lambda_t - lambda_s
    is x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D, where D is the x0 prediction corrected
    by the previous one: D = (1 + 1/(2r)) x0_s - x0_prev / (2r), r = h_prev / h. The first step, and
    the last (onto sigma = 0, where it returns the x0 prediction), are first order. Deterministic:
    one model call per step and no noise after the start."""
    x = _initial_noise(shape, noise, generator, device)
    abar, abar_prev = diffusion.array("alphas_cumprod"), diffusion.array("alphas_cumprod_prev")
    prev_x0, prev_h = None, None
    for i, t in _reverse_steps(diffusion, x, progress):
        x0 = diffusion.p_mean_variance(model, x, t, model_kwargs, clip_denoised, threshold)["pred_x0"]
        if i == 0:
            x = x0
            continue
        a_s, a_t = abar[i].item(), abar_prev[i].item()
        # lambda in float64: -inf at a zero-terminal-SNR start, which the formulas below tolerate.
        h = 0.5 * (math.log(a_t / (1 - a_t)) - (math.log(a_s / (1 - a_s)) if a_s > 0 else -math.inf))
        d = x0
        if prev_x0 is not None:
            half_inv_r = h / (2 * prev_h)
            d = (1 + half_inv_r) * x0 - half_inv_r * prev_x0
        x = math.sqrt((1 - a_t) / (1 - a_s)) * x - math.sqrt(a_t) * math.expm1(-h) * d
        prev_x0, prev_h = x0, h
    return x


SAMPLE_LOOPS = {
    Sampler.ddpm: p_sample_loop,
    Sampler.ddim: ddim_sample_loop,
    Sampler.dpmpp2m: dpm_solver_pp_2m_loop,
}
"""The loop of each `Sampler` (looked up by the member or its name)."""


def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    sampler: str = "ddim",
    steps: str | None = None,
    guidance: float = 0.0,
    guidance_rescale: float = 0.0,
    threshold: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    null_kwargs: dict[str, Tensor] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
) -> Tensor:
    """Sample images [B, C, H, W] in [-1, 1] with `sampler` ("ddpm" | "ddim" | "dpmpp2m") over
    `diffusion` respaced by `steps` (e.g. "50"; None: its own steps), guided by `guidance` (0: none)
    with CFG rescale `guidance_rescale`, clipping x0 predictions by `threshold` (0: to [-1, 1]; else
    a dynamic-thresholding quantile). The null branch uses `null_kwargs`, by default the null text
    built from `model_kwargs["tokens"]` and `["mask"]`. `eta` only applies to DDIM."""
    if sampler not in SAMPLE_LOOPS:
        raise ValueError(f"unknown sampler {sampler!r} (expected one of {', '.join(SAMPLE_LOOPS)})")
    if not check_guidance(guidance):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    if steps is not None:
        diffusion = diffusion.respace(steps)
    model_kwargs = model_kwargs or {}
    if guidance != 0:
        if null_kwargs is None:
            if "tokens" not in model_kwargs or "mask" not in model_kwargs:
                raise ValueError("guidance needs model_kwargs 'tokens' and 'mask', or explicit null_kwargs")
            null_tokens, null_mask = null_text_like(model_kwargs["tokens"], model_kwargs["mask"])
            null_kwargs = {"tokens": null_tokens, "mask": null_mask}
        model = guided(model, guidance, null_kwargs, guidance_rescale)
    common = dict(
        model_kwargs=model_kwargs,
        generator=generator,
        device=device,
        noise=noise,
        clip_denoised=clip_denoised,
        threshold=threshold,
        progress=progress,
    )
    if sampler == "ddim":
        common["eta"] = eta
    return SAMPLE_LOOPS[sampler](model, diffusion, shape, **common)
