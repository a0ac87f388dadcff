"""Classifier-free guidance and the DDPM / DDIM samplers (DESIGN 3.4).

Guidance (Ho & Salimans 2022) is a wrapper around the network: the conditional and the null-text
branches run as one batch and their epsilons combine as eps_c + scale * (eps_c - eps_null), so scale 0
is the plain conditional model. Guidance is the one place that knows the text kwargs: `tokens` and
`mask`, where the null transcript is [BOS, NULL, EOS].

Samplers run over a (usually respaced) `GaussianDiffusion`. Every random number comes from the
caller's `torch.Generator`, so a seed fixes the sample. Superres sampling is the same loop with
`low_res` in `model_kwargs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from glyphgen.diffusion.gaussian import GaussianDiffusion, Model, randn_from
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
    draw_device = tokens.device if generator is None else generator.device
    drop = (torch.rand(tokens.shape[0], generator=generator, device=draw_device) < p).to(tokens.device)
    return torch.where(drop[:, None], null_tokens, tokens), torch.where(drop[:, None], null_mask, mask)


def _both(cond: Any, null: Any | None, batch: int) -> Any:
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


def guided(model: Model, scale: float, null_kwargs: dict[str, Tensor]) -> Model:
    """`model` with classifier-free guidance: eps = eps_c + scale * (eps_c - eps_null), from one
    batched forward of the conditional kwargs and the same kwargs with `null_kwargs` substituted
    (e.g. {"tokens", "mask"} from `null_text_like`). The variance channels come from the conditional
    branch. Scale 0 returns `model` itself: no unconditional pass at all."""
    if scale == 0:
        return model

    def forward(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        missing = set(null_kwargs) - set(kwargs)
        if missing:
            raise ValueError(f"guidance replaces {sorted(missing)} but the model kwargs lack them")
        batch, channels = x.shape[:2]
        doubled = {k: _both(v, null_kwargs.get(k), batch) for k, v in kwargs.items()}
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), **doubled).chunk(2)
        eps = cond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([eps, cond[:, channels:]], dim=1)

    return forward


def _start(
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
    progress: Progress | None = None,
) -> Tensor:
    """Ancestral DDPM sampling: x_{t-1} ~ p(x_{t-1} | x_t) from t = T-1 down to 0, starting at
    `noise` or at N(0, I) drawn from `generator`. Returns x_0 [B, C, H, W]."""
    x = _start(shape, noise, generator, device)
    for i, t in _reverse_steps(diffusion, x, progress):
        out = diffusion.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
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
    progress: Progress | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021): x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} -
    sigma^2) eps_hat + sigma z, with sigma = eta * sqrt((1 - abar_{t-1}) / (1 - abar_t)) *
    sqrt(1 - abar_t / abar_{t-1}); eta = 0 is deterministic given the starting noise."""
    x = _start(shape, noise, generator, device)
    for i, t in _reverse_steps(diffusion, x, progress):
        out = diffusion.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
        # eps consistent with the (clipped) x0 prediction, as in DDIM's reference implementation.
        eps = diffusion.predict_eps(x, t, out["pred_x0"])
        abar = diffusion.at("alphas_cumprod", t, x)
        abar_prev = diffusion.at("alphas_cumprod_prev", t, x)
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        x = abar_prev.sqrt() * out["pred_x0"] + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if i > 0 and eta > 0:
            x = x + sigma * randn_from(x.shape, generator, x.device, x.dtype)
    return x


def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    sampler: str = "ddim",
    steps: str | None = None,
    guidance: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    null_kwargs: dict[str, Tensor] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
) -> Tensor:
    """Sample images [B, C, H, W] in [-1, 1] with `sampler` ("ddpm" | "ddim") over `diffusion`
    respaced by `steps` (e.g. "50"; None: its own steps), guided by `guidance` (0: none). The null
    branch uses `null_kwargs`, by default the null text built from `model_kwargs["tokens"]` and
    `["mask"]`. `eta` only applies to DDIM."""
    if steps is not None:
        diffusion = diffusion.respace(steps)
    model_kwargs = model_kwargs or {}
    if guidance != 0:
        if null_kwargs is None:
            if "tokens" not in model_kwargs or "mask" not in model_kwargs:
                raise ValueError("guidance needs model_kwargs 'tokens' and 'mask', or explicit null_kwargs")
            null_tokens, null_mask = null_text_like(model_kwargs["tokens"], model_kwargs["mask"])
            null_kwargs = {"tokens": null_tokens, "mask": null_mask}
        model = guided(model, guidance, null_kwargs)
    common = dict(
        model_kwargs=model_kwargs,
        generator=generator,
        device=device,
        noise=noise,
        clip_denoised=clip_denoised,
        progress=progress,
    )
    if sampler == "ddpm":
        return p_sample_loop(model, diffusion, shape, **common)
    if sampler == "ddim":
        return ddim_sample_loop(model, diffusion, shape, eta=eta, **common)
    raise ValueError(f"unknown sampler {sampler!r} (expected ddpm or ddim)")
