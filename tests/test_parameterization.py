"""Parameterizations (eps, v, x0), min-SNR weighting, the zero-terminal-SNR schedule, starting from pure
noise, dynamic thresholding, CFG rescale and DPM-Solver++(2M) on a Gaussian whose score is exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from glyphgen.config import ConfigValueError
from glyphgen.diffusion import (
    SAMPLE_LOOPS,
    DiffusionConfig,
    GaussianDiffusion,
    Parameterization,
    Prediction,
    Sampler,
    Weighting,
    create_diffusion,
    dynamic_threshold,
    guided,
    make_betas,
    sample,
    space_timesteps,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(seed: int = 0, n: int = 8):
    x0 = torch.rand(n, 3, 4, 4, generator=gen(seed), dtype=torch.float64) * 2 - 1
    eps = torch.randn(n, 3, 4, 4, generator=gen(seed + 1), dtype=torch.float64)
    t = torch.randint(0, 1000, (n,), generator=gen(seed + 2))
    return x0, eps, t


@pytest.mark.parametrize("name", Prediction)
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_target_round_trips_to_x0_and_eps(name, zero_terminal_snr):
    if name == "eps" and zero_terminal_snr:
        pytest.skip("eps cannot give x0 where the signal is zero (refused by the config)")
    d = GaussianDiffusion(make_betas("cosine", 1000, zero_terminal_snr), parameterization=name)
    x0, eps, t = batch()
    if zero_terminal_snr:
        t[0] = 999  # alpha_bar = 0 exactly: x_t is the noise
    p = Parameterization(name)
    x_t = d.q_sample(x0, t, eps)
    out = p.target(x0, eps, t, d)
    torch.testing.assert_close(p.eps(out, x_t, t, d), eps, atol=1e-8, rtol=1e-6)
    if zero_terminal_snr and name == "v":
        # At alpha_bar = 0, x0 is recoverable from v (v = -x0 there), not from x_t.
        torch.testing.assert_close(p.x0(out, x_t, t, d), x0, atol=1e-8, rtol=1e-6)
    elif not zero_terminal_snr:
        torch.testing.assert_close(p.x0(out, x_t, t, d), x0, atol=1e-6, rtol=1e-6)


def test_v_is_a_rotation_of_x0_and_eps():
    """x0 -> v -> x0 and the v of Salimans & Ho: v = a eps - s x0 with a^2 + s^2 = 1."""
    d = create_diffusion(DiffusionConfig(parameterization="v"))
    x0, eps, t = batch(3)
    v = Parameterization("v").target(x0, eps, t, d)
    a, s = d.coefficient("sqrt_alphas_cumprod", t, x0), d.coefficient("sqrt_one_minus_alphas_cumprod", t, x0)
    torch.testing.assert_close(v, a * eps - s * x0)
    torch.testing.assert_close(a * d.q_sample(x0, t, eps) - s * v, x0)


@pytest.mark.parametrize("name", Prediction)
@pytest.mark.parametrize("weighting", Weighting.values())
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_the_true_target_gives_zero_mse(name, weighting, learn_sigma):
    d = create_diffusion(
        DiffusionConfig(parameterization=name, loss_weighting=weighting, learn_sigma=learn_sigma)
    )
    x0, eps, t = batch(5)
    target = Parameterization(name).target(x0, eps, t, d)
    var = torch.zeros_like(x0)

    def oracle(x, tt):
        return torch.cat([target, var], 1) if learn_sigma else target

    terms = d.training_losses(oracle, x0, t, noise=eps)
    assert torch.all(terms["mse"] < 1e-20)
    if not learn_sigma:
        assert torch.all(terms["loss"] < 1e-20)


X0_SPACE_WEIGHT = {"min_snr": lambda snr: snr.clamp(max=5.0), "p2": lambda snr: snr / (1 + snr)}


@pytest.mark.parametrize("weighting", list(X0_SPACE_WEIGHT))
def test_a_weighting_gives_every_parameterization_the_same_x0_space_weight(weighting):
    """An x0 error d costs w(SNR) * |d|^2, whatever the network predicts: min(SNR, gamma) under
    min-SNR, SNR / (1 + SNR) under P2."""
    x0, eps, t = batch(7, n=16)
    d_err = 0.01 * torch.randn(x0.shape, generator=gen(9), dtype=torch.float64)
    losses = {}
    for name in Prediction:
        d = create_diffusion(
            DiffusionConfig(parameterization=name, loss_weighting=weighting, learn_sigma=False)
        )
        p = Parameterization(name)
        x_t = d.q_sample(x0, t, eps)
        wrong_x0 = x0 + d_err
        # The output whose x0 is off by d_err (and whose eps follows from x_t).
        wrong = p.target(wrong_x0, d.predict_eps(x_t, t, wrong_x0), t, d)
        losses[name] = d.training_losses(lambda x, tt, w=wrong: w, x0, t, noise=eps)["loss"]
    snr = d.array("snr")[t]
    expected = X0_SPACE_WEIGHT[weighting](snr) * d_err.pow(2).mean(dim=(1, 2, 3))
    for name in Prediction:
        torch.testing.assert_close(losses[name], expected, rtol=1e-5, atol=1e-12)


def test_uniform_eps_loss_is_unchanged():
    """eps with uniform weighting is the loss of every earlier release: MSE against the noise."""
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    x0, eps, t = batch(11)
    out = torch.randn(x0.shape, generator=gen(12), dtype=torch.float64)
    terms = d.training_losses(lambda x, tt: out, x0, t, noise=eps)
    assert torch.equal(terms["loss"], (out - eps).pow(2).mean(dim=(1, 2, 3)))


def test_zero_terminal_snr_schedule():
    for schedule in ("linear", "cosine"):
        plain = (1 - make_betas(schedule, 1000)).cumprod(0)
        ztsnr = (1 - make_betas(schedule, 1000, zero_terminal_snr=True)).cumprod(0)
        assert ztsnr[-1] == 0 and math.isclose(ztsnr[0], (1 - make_betas(schedule, 1000)[0]), rel_tol=1e-12)
        assert torch.all(ztsnr[1:] <= ztsnr[:-1])
        assert plain[-1] > 0


def test_config_refuses_eps_with_zero_terminal_snr_and_bad_names():
    with pytest.raises(ConfigValueError, match="zero_terminal_snr"):
        DiffusionConfig(parameterization="eps", zero_terminal_snr=True)
    with pytest.raises(ConfigValueError, match="parameterization"):
        DiffusionConfig(parameterization="score")
    with pytest.raises(ConfigValueError, match="loss_weighting"):
        DiffusionConfig(loss_weighting="snr")
    with pytest.raises(ConfigValueError, match="threshold"):
        DiffusionConfig(threshold=1.5)
    with pytest.raises(ConfigValueError, match="guidance_rescale"):
        DiffusionConfig(guidance_rescale=-0.1)


def test_every_sampler_has_a_loop():
    assert set(Sampler) == set(SAMPLE_LOOPS)
    assert SAMPLE_LOOPS["ddim"] is SAMPLE_LOOPS[Sampler.ddim]  # names look the loops up too


def test_bad_names_say_the_choices():
    with pytest.raises(ConfigValueError, match=r"^parameterization: must be one of eps, v, x0, got 'score'$"):
        DiffusionConfig(parameterization="score")
    with pytest.raises(ValueError, match=r"unknown parameterization 'score' \(expected one of eps, v, x0\)"):
        Parameterization("score")
    with pytest.raises(
        ValueError, match=r"unknown loss weighting 'snr' \(expected one of uniform, min_snr, p2\)"
    ):
        Parameterization("v").loss_weight(torch.ones(1), "snr", 5.0)
    assert DiffusionConfig(parameterization="v", loss_weighting="min_snr").parameterization is Prediction.v


@pytest.mark.parametrize("spec", ["50", "ddim25", "ddim2", "90,60,60,20,20", "1", "10,5", "ddim999", "1000"])
@pytest.mark.parametrize("sampler", Sampler)
def test_every_sampler_starts_from_the_last_trained_step(spec, sampler):
    seen = []

    def net(x, t):
        seen.append(int(t[0]))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    d = create_diffusion(DiffusionConfig())
    sample(net, d, (1, 1, 2, 2), sampler=sampler, steps=spec, generator=gen(0))
    assert seen[0] == 999
    assert seen == sorted(seen, reverse=True) and len(seen) == len(space_timesteps(1000, spec))


@pytest.mark.parametrize("name", ["v", "x0"])
def test_zero_terminal_snr_samples_finite_images(name):
    d = create_diffusion(DiffusionConfig(parameterization=name, zero_terminal_snr=True, schedule="linear"))

    def net(x, t):
        return torch.cat([0.5 * torch.tanh(x), torch.zeros_like(x)], 1)

    for sampler in Sampler:
        out = sample(net, d, (2, 1, 4, 4), sampler=sampler, steps="ddim10", generator=gen(0))
        assert torch.isfinite(out).all(), sampler


def test_dynamic_threshold():
    x = torch.tensor([[0.2, -0.5, 0.9, 0.1], [3.0, -4.0, 0.5, 1.0]]).view(2, 1, 2, 2)
    assert torch.equal(dynamic_threshold(x, 0.0), x.clamp(-1, 1))
    out = dynamic_threshold(x, 0.99)
    assert torch.equal(out[0], x[0])  # within [-1, 1]: untouched
    s = torch.quantile(x[1].abs().flatten(), 0.99)
    torch.testing.assert_close(out[1], x[1].clamp(-s, s) / s)
    assert out[1].abs().max() <= 1


def test_cfg_rescale_restores_the_conditional_std():
    def net(x, t, tokens, mask):
        scale = 1 + tokens.float().mean(dim=1).view(-1, 1, 1, 1)  # null text: a smaller output
        return torch.cat([x * scale, torch.zeros_like(x)], 1)

    x = torch.randn(2, 1, 4, 4, generator=gen(0))
    t = torch.zeros(2, dtype=torch.long)
    kwargs = {"tokens": torch.full((2, 3), 5), "mask": torch.ones(2, 3, dtype=torch.bool)}
    null = {"tokens": torch.zeros(1, 3, dtype=torch.long), "mask": torch.ones(1, 3, dtype=torch.bool)}
    cond = net(x, t, **kwargs)[:, :1]
    plain = guided(net, 4.0, null)(x, t, **kwargs)[:, :1]
    full = guided(net, 4.0, null, rescale=1.0)(x, t, **kwargs)[:, :1]
    half = guided(net, 4.0, null, rescale=0.5)(x, t, **kwargs)[:, :1]
    assert plain.std() > 2 * cond.std()
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)


@pytest.mark.parametrize("name", Prediction)
def test_dpm_solver_pp_converges_on_a_gaussian_with_exact_score(name):
    """Data N(mu, sd^2) per pixel: E[x0 | x_t] = mu + a sd^2 (x_t - a mu) / (a^2 sd^2 + s^2) exactly.
    The ODE carries N(0, I) to the marginal at the spec's last step t_last, where the solver returns
    E[x0 | x_t_last]: mean mu, std sd * sqrt(a^2 sd^2 / (a^2 sd^2 + s^2)). DPM-Solver++(2M) must reach
    that at 20 steps, closer than DDIM does, and agree with its own 200-step solution."""
    mu, sd = 0.3, 0.2
    d = create_diffusion(DiffusionConfig(parameterization=name, learn_sigma=False))
    p, abar = Parameterization(name), d.array("alphas_cumprod")

    def exact(x, t):
        a2 = abar[t].view(-1, 1, 1, 1).to(x.dtype)
        x0 = mu + a2.sqrt() * sd**2 * (x - a2.sqrt() * mu) / (a2 * sd**2 + 1 - a2)
        eps = (x - a2.sqrt() * x0) / (1 - a2).sqrt()
        return p.target(x0, eps, t, d)

    def expected_std(spec):
        a2 = abar[space_timesteps(1000, spec)[0]].item()
        return sd * math.sqrt(a2 * sd**2 / (a2 * sd**2 + 1 - a2))

    noise = torch.randn(4000, 1, 2, 2, generator=gen(0), dtype=torch.float64)
    noise = (noise - noise.mean()) / noise.std()  # the start's sampling error is not the solver's
    run = {
        (sampler, spec): sample(exact, d, noise.shape, sampler=sampler, steps=spec, noise=noise)
        for sampler, spec in [("dpmpp2m", "ddim20"), ("ddim", "ddim20"), ("dpmpp2m", "ddim200")]
    }
    fast, ddim = run["dpmpp2m", "ddim20"], run["ddim", "ddim20"]
    assert abs(fast.mean().item() - mu) < 0.005
    error = abs(fast.std().item() - expected_std("ddim20"))
    assert error < 0.005 and error < abs(ddim.std().item() - expected_std("ddim20")) / 3
    assert abs(run["dpmpp2m", "ddim200"].std().item() - expected_std("ddim200")) < 0.002


def test_a_bundle_exported_before_parameterizations_samples_exactly_as_before():
    """tests/data/bundle-74f265e was written by the code of commit 74f265e (before this module
    existed), with the samples that code drew from it: it loads as eps and draws the same images."""
    from safetensors.torch import load_file

    from glyphgen.inference.bundle import load_bundle

    folder = Path(__file__).parent / "data" / "bundle-74f265e"
    assert "parameterization" not in (folder / "config.yaml").read_text()
    bundle = load_bundle(folder, "cpu")
    assert bundle.config.diffusion.parameterization == "eps"
    expected = load_file(folder / "samples.safetensors")
    drawn = {
        "ddim-default": bundle.sample(["AB", "x\ny"], n=2, seed=3),
        "ddpm-10": bundle.sample(["AB", "x\ny"], n=2, seed=3, steps="10", sampler="ddpm"),
        "ddim-13-g1": bundle.sample(["AB"], n=1, seed=4, steps="13", guidance=1.0),
    }
    for key, images in drawn.items():
        assert torch.equal(images, expected[key]), key


def test_a_warm_start_must_keep_the_parameterization(tmp_path_factory):
    """An eps checkpoint (the shared tiny fixture) cannot seed a stage that trains v, and can seed one
    that trains eps."""
    from bundle_fixtures import trained_checkpoints

    from glyphgen.config import load_config, to_dict
    from glyphgen.training.config import StageConfig
    from glyphgen.training.stages import FinetuneReal

    eps_checkpoint = str(trained_checkpoints(tmp_path_factory)["base"])

    def stage(parameterization: str) -> FinetuneReal:
        overrides = [
            "stage=finetune-real",
            "model_size=tiny",
            "data.shards=unused",
            "trainer.accelerator=cpu",
        ]
        cfg = load_config(
            StageConfig, overrides=[*overrides, f"diffusion.parameterization={parameterization}"]
        )
        return FinetuneReal(to_dict(cfg))

    with pytest.raises(ValueError, match="predicts eps but this stage's diffusion.parameterization is v"):
        stage("v").warm_start(eps_checkpoint)
    assert "loaded all" in stage("eps").warm_start(eps_checkpoint)
