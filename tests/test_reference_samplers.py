"""glyphgen's samplers against diffusers' schedulers on identical inputs (a fixed toy network, the same
betas, timesteps, starting noise and generator): DDPM with learned-range variance, DDIM, and
DPM-Solver++(2M), for the eps, v and x0 parameterizations. diffusers is a test-only dependency."""

from __future__ import annotations

import pytest
import torch

from glyphgen.diffusion import DiffusionConfig, create_diffusion, sample, space_timesteps

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 2, 4, 4)
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def toy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth fixed function of (x_t, t) with 2C channels: a prediction and a variance value."""
    s = (t.float() / 1000).view(-1, 1, 1, 1)
    pred = 0.6 * torch.sin(1.3 * x + 3 * s) + 0.2 * x * s
    return torch.cat([pred, torch.tanh(x - s)], dim=1)


def ours(parameterization: str, sampler: str, steps: str, clip: bool) -> torch.Tensor:
    diffusion = create_diffusion(DiffusionConfig(parameterization=parameterization))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return sample(
        toy,
        diffusion,
        SHAPE,
        sampler=sampler,
        steps=steps,
        noise=noise,
        clip_denoised=clip,
        generator=torch.Generator().manual_seed(1),
    )


def theirs(scheduler, timesteps: list[int] | None, steps: int | None, learned_variance: bool, **step_kwargs):
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        out = toy(x, torch.full((SHAPE[0],), int(t)))
        out = out if learned_variance else out[:, : SHAPE[1]]
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


def betas() -> list[float]:
    return create_diffusion(DiffusionConfig()).array("betas").tolist()


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_ddpm_matches_diffusers(parameterization):
    # A count spec keeps step 0, where neither adds noise (diffusers adds it at any t > 0).
    kept = space_timesteps(1000, "20")
    scheduler = diffusers.DDPMScheduler(
        trained_betas=betas(),
        variance_type="learned_range",
        prediction_type=PREDICTION_TYPE[parameterization],
        clip_sample=True,
    )
    expected = theirs(scheduler, sorted(kept, reverse=True), None, learned_variance=True)
    got = ours(parameterization, "ddpm", "20", clip=True)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_ddim_matches_diffusers(parameterization):
    scheduler = diffusers.DDIMScheduler(
        trained_betas=betas(),
        prediction_type=PREDICTION_TYPE[parameterization],
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    # glyphgen, like GLIDE, re-derives eps from the clipped x0.
    expected = theirs(scheduler, None, 25, learned_variance=False, use_clipped_model_output=True)
    got = ours(parameterization, "ddim", "ddim25", clip=True)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_dpm_solver_pp_2m_matches_diffusers(parameterization):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        trained_betas=betas(),
        prediction_type=PREDICTION_TYPE[parameterization],
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    expected = theirs(scheduler, None, 20, learned_variance=False)
    got = ours(parameterization, "dpmpp2m", "ddim20", clip=False)
    # Unclipped eps predictions reach |x| ~ 1e4 at the first step: compare relative to the size.
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
