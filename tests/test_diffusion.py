"""Diffusion process: closed forms, schedules, respacing, hybrid loss, samplers and guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from glyphgen.config import ConfigValueError
from glyphgen.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    augment_low_res,
    cosine_betas,
    create_diffusion,
    ddim_sample_loop,
    drop_text,
    guided,
    linear_betas,
    make_betas,
    null_text_like,
    p_sample_loop,
    sample,
    space_timesteps,
)
from glyphgen.text.tokenizer import BOS, EOS, NULL, PAD

C, H, W = 3, 8, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds contention on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyNet(nn.Module):
    """A conv net taking (x, t) and ignoring any text; t enters as an extra input channel."""

    def __init__(self, channels: int = C, learn_sigma: bool = True, width: int = 32):
        super().__init__()
        out = 2 * channels if learn_sigma else channels
        self.net = nn.Sequential(
            nn.Conv2d(channels + 1, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, out, 3, padding=1),
        )

    def forward(self, x, t, **_text):
        t_map = (t.float() / 1000).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.net(torch.cat([x, t_map], 1))


class TextToy(nn.Module):
    """Responds to `tokens` through a masked mean of token embeddings (so padding changes nothing),
    and records the token batches it was called with."""

    def __init__(self, vocab: int = 40):
        super().__init__()
        self.embed = nn.Embedding(vocab, 2 * C)
        self.conv = nn.Conv2d(C, 2 * C, 3, padding=1)
        self.calls: list[torch.Tensor] = []

    def forward(self, x, t, tokens, mask):
        self.calls.append(tokens.clone())
        m = mask.unsqueeze(-1).float()
        text = (self.embed(tokens) * m).sum(1) / m.sum(1)
        return torch.tanh(self.conv(x) + text[:, :, None, None])


def text_batch(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.tensor([[BOS, 10, 11, 12, 13, EOS], [BOS, 20, 21, EOS, PAD, PAD]])[:batch]
    return tokens, tokens != PAD


def null_kwargs(tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    null_tokens, null_mask = null_text_like(tokens, mask)
    return {"tokens": null_tokens, "mask": null_mask}


# --- schedules and closed forms ------------------------------------------------------------------


def test_cosine_schedule_properties():
    betas = cosine_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert betas[-1] == 0.999  # the clip is what keeps the last step finite
    abar = torch.cumprod(1 - betas, 0)
    assert (abar[1:] < abar[:-1]).all()
    # Unclipped steps reproduce alpha_bar(t) = f(t) / f(0) with f the squared cosine.
    f = [math.cos(((i / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(1001)]
    expected = torch.tensor([f[i + 1] / f[0] for i in range(999)], dtype=torch.float64)
    torch.testing.assert_close(abar[:999], expected, rtol=1e-9, atol=1e-12)


def test_linear_schedule_and_names():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert linear_betas(250)[-1].item() == pytest.approx(0.08)
    assert torch.equal(make_betas("cosine", 100), cosine_betas(100))
    with pytest.raises(ValueError, match="quadratic"):
        make_betas("quadratic", 10)


def _reference_abar(betas: torch.Tensor) -> list[float]:
    out, prod = [], 1.0
    for b in betas.tolist():
        prod *= 1 - b
        out.append(prod)
    return out


def test_q_sample_matches_closed_form():
    d = GaussianDiffusion(cosine_betas(1000))
    x0 = torch.rand(4, C, H, W, dtype=torch.float64, generator=gen(0)) * 2 - 1
    noise = torch.randn(4, C, H, W, dtype=torch.float64, generator=gen(1))
    t = torch.tensor([0, 10, 500, 999])
    abar = _reference_abar(d.array("betas"))
    expected = torch.stack(
        [math.sqrt(abar[s]) * x0[i] + math.sqrt(1 - abar[s]) * noise[i] for i, s in enumerate(t.tolist())]
    )
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected, rtol=1e-10, atol=1e-12)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from conditioning the Gaussians N(x_{t-1}; sqrt(abar_{t-1}) x_0,
    1 - abar_{t-1}) and N(x_t; sqrt(alpha_t) x_{t-1}, beta_t), not from the closed-form coefficients."""
    d = GaussianDiffusion(linear_betas(1000))
    betas = d.array("betas").tolist()
    abar = _reference_abar(d.array("betas"))
    x0 = torch.rand(3, C, H, W, dtype=torch.float64, generator=gen(2)) * 2 - 1
    x_t = torch.randn(3, C, H, W, dtype=torch.float64, generator=gen(3))
    t = torch.tensor([1, 200, 999])
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
    for i, s in enumerate(t.tolist()):
        prior_var, beta = 1 - abar[s - 1], betas[s]
        post_var = 1 / (1 / prior_var + (1 - beta) / beta)
        post_mean = post_var * (
            math.sqrt(abar[s - 1]) * x0[i] / prior_var + math.sqrt(1 - beta) * x_t[i] / beta
        )
        torch.testing.assert_close(mean[i], post_mean, rtol=1e-9, atol=1e-12)
        assert var[i].item() == pytest.approx(post_var, rel=1e-9)
        assert log_var[i].item() == pytest.approx(math.log(post_var), rel=1e-9)
    # At t = 0 the posterior is x_0 itself; its log-variance is floored at beta~_1, not -inf.
    mean0, var0, log_var0 = d.q_posterior_mean_variance(x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x0)
    assert (var0 == 0).all() and torch.isfinite(log_var0).all()


# --- respacing ------------------------------------------------------------------------------------


def test_space_timesteps_counts():
    kept = space_timesteps(1000, "50")
    assert len(kept) == 50 == len(set(kept)) and kept[0] == 0 and kept[-1] == 999
    assert kept == sorted(kept)
    kept = space_timesteps(1000, "10,5")
    assert len(kept) == 15
    assert all(s < 500 for s in kept[:10]) and all(s >= 500 for s in kept[10:])
    assert space_timesteps(1000, "ddim50") == list(range(19, 1000, 20))
    assert space_timesteps(1000, "ddim3") == [332, 666, 999]  # a fractional stride, rounded
    assert space_timesteps(1000, "1") == [999]
    assert space_timesteps(1000, "1000") == list(range(1000))
    assert len(space_timesteps(1000, "90,60,60,20,20")) == 250


@pytest.mark.parametrize(
    "spec", ["", "abc", "0", "1001", "10,600", "-5", "ddim", "ddimx", "ddim0", "ddim1", "5,,5"]
)
def test_space_timesteps_bad_spec(spec):
    with pytest.raises(ValueError) as err:
        space_timesteps(1000, spec)
    message = str(err.value)
    assert repr(spec) in message and "\n" not in message


def test_config_validation():
    with pytest.raises(ConfigValueError) as err:
        DiffusionConfig(sample_steps="fifty")
    assert err.value.key == "sample_steps"
    with pytest.raises(ConfigValueError, match="^schedule: must be one of cosine, linear, got 'quadratic'$"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ConfigValueError, match="^sampler: must be one of ddpm, ddim, dpmpp2m, got 'euler'$"):
        DiffusionConfig(sampler="euler")
    with pytest.raises(ConfigValueError, match="noise_aug_max"):
        DiffusionConfig(noise_aug_max=1.5)


def test_respace_all_steps_equals_original():
    d = create_diffusion(DiffusionConfig())
    r = d.respace("1000")
    assert r.num_steps == 1000 and torch.equal(r.timestep_map, torch.arange(1000))
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped"):
        torch.testing.assert_close(r.array(name), d.array(name), rtol=1e-9, atol=1e-15)
    torch.manual_seed(0)
    net = TinyNet()
    x = torch.randn(2, C, H, W, generator=gen(4))
    t = torch.tensor([3, 700])
    a, b = d.p_mean_variance(net, x, t), r.p_mean_variance(net, x, t)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_respaced_calls_model_with_original_timesteps():
    d = create_diffusion(DiffusionConfig(), "50")
    full = create_diffusion(DiffusionConfig())
    kept = space_timesteps(1000, "50")
    torch.testing.assert_close(d.array("alphas_cumprod"), full.array("alphas_cumprod")[kept])
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2 * C, *x.shape[2:])

    d.p_mean_variance(model, torch.zeros(2, C, H, W), torch.tensor([0, 49]))
    assert seen[0].tolist() == [0, 999]


# --- hybrid loss ----------------------------------------------------------------------------------


def test_hybrid_loss_terms_and_vlb_gradient_only_to_variance():
    d = create_diffusion(DiffusionConfig())
    x0 = torch.rand(4, C, H, W, generator=gen(5)) * 2 - 1
    t = torch.tensor([0, 1, 400, 999])  # t = 0 exercises the decoder NLL
    output = nn.Parameter(torch.randn(4, 2 * C, H, W, generator=gen(6)) * 0.5)
    losses = d.training_losses(
        lambda x, t: output * 1, x0, t, noise=torch.randn(4, C, H, W, generator=gen(7))
    )
    for key in ("loss", "mse", "vlb"):
        assert losses[key].shape == (4,) and torch.isfinite(losses[key]).all()
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.001 * 1000 * losses["vlb"])
    assert (losses["vlb"] > 0).all()

    (vlb_grad,) = torch.autograd.grad(losses["vlb"].sum(), output, retain_graph=True)
    assert (vlb_grad[:, :C] == 0).all()
    assert (vlb_grad[:, C:].abs().sum(dim=(1, 2, 3)) > 0).all()
    (mse_grad,) = torch.autograd.grad(losses["mse"].sum(), output)
    assert (mse_grad[:, C:] == 0).all() and (mse_grad[:, :C] != 0).any()


def test_vlb_vanishes_for_the_true_posterior():
    """Exact eps and v = -1 (variance beta~_t) make p(x_{t-1} | x_t) the true posterior: KL = 0."""
    d = create_diffusion(DiffusionConfig())
    x0 = torch.rand(3, C, H, W, dtype=torch.float64, generator=gen(11)) * 2 - 1
    noise = torch.randn(3, C, H, W, dtype=torch.float64, generator=gen(12))
    t = torch.tensor([1, 300, 998])
    exact = torch.cat([noise, -torch.ones_like(noise)], 1)
    losses = d.training_losses(lambda x, t: exact, x0, t, noise=noise)
    torch.testing.assert_close(losses["mse"], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(losses["vlb"], torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_fixed_variance_loss_is_mse():
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    out = nn.Parameter(torch.randn(2, C, H, W))
    losses = d.training_losses(lambda x, t: out * 1, torch.zeros(2, C, H, W), torch.tensor([0, 5]))
    torch.testing.assert_close(losses["loss"], losses["mse"])
    assert not losses["vlb"].requires_grad
    with pytest.raises(ValueError, match="channels"):
        d.p_mean_variance(
            lambda x, t: torch.zeros(2, 2 * C, H, W), torch.zeros(2, C, H, W), torch.tensor([0, 5])
        )


def test_tiny_net_overfits_one_batch():
    torch.manual_seed(0)
    d = create_diffusion(DiffusionConfig())
    net = TinyNet(width=16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x0 = torch.rand(8, C, H, W, generator=gen(8)) * 2 - 1
    t = d.sample_t(8, generator=gen(9))
    noise = torch.randn(8, C, H, W, generator=gen(10))
    history = []
    for _ in range(200):
        loss = d.training_losses(net, x0, t, noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-10:]) / 10 < 0.3 * sum(history[:10]) / 10


def test_sample_t_and_augment_low_res():
    d = create_diffusion(DiffusionConfig())
    t = d.sample_t(1000, generator=gen(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999 and t.unique().numel() > 400
    assert torch.equal(t, d.sample_t(1000, generator=gen(0)))
    low = torch.rand(16, C, H, W) * 2 - 1
    same, t0 = augment_low_res(d, low, 0.0)
    assert same is low and (t0 == 0).all()
    noised, t_aug = augment_low_res(d, low, 0.2, generator=gen(1))
    assert noised.shape == low.shape and t_aug.max() < 200 and not torch.equal(noised, low)


# --- samplers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
@pytest.mark.parametrize("steps", ["1", "50"])
def test_samplers_run(sampler, steps):
    torch.manual_seed(0)
    net = TinyNet()
    d = create_diffusion(DiffusionConfig())
    ticks = []
    out = sample(
        net,
        d,
        (2, C, H, W),
        sampler=sampler,
        steps=steps,
        generator=gen(0),
        progress=lambda done, total: ticks.append((done, total)),
    )
    assert out.shape == (2, C, H, W) and torch.isfinite(out).all()
    assert out.abs().max() <= 1  # the last step returns the clipped x0 prediction
    n = int(steps)
    assert ticks == [(i, n) for i in range(1, n + 1)]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_sampling_is_deterministic_per_seed(sampler):
    torch.manual_seed(0)
    net = TinyNet()
    d = create_diffusion(DiffusionConfig(), "10")
    kwargs = dict(sampler=sampler, eta=1.0)
    a = sample(net, d, (2, C, H, W), generator=gen(1), **kwargs)
    b = sample(net, d, (2, C, H, W), generator=gen(1), **kwargs)
    c = sample(net, d, (2, C, H, W), generator=gen(2), **kwargs)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_oracle_model_samples_its_point_mass(sampler):
    """For data that is a single image x*, the ideal eps is (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)
    with abar at the ORIGINAL timestep: a respaced sampler must land on x* exactly."""
    full = create_diffusion(DiffusionConfig())
    target = torch.rand(1, C, H, W, generator=gen(13)) * 1.6 - 0.8
    abar = full.array("alphas_cumprod").float()

    def oracle(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    out = sample(oracle, full, (2, C, H, W), sampler=sampler, steps="20", generator=gen(14))
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1), atol=1e-4, rtol=0)


def test_ddim_eta_zero_is_deterministic_given_noise():
    torch.manual_seed(0)
    net = TinyNet()
    d = create_diffusion(DiffusionConfig(), "10")
    noise = torch.randn(2, C, H, W, generator=gen(3))
    a = ddim_sample_loop(net, d, noise.shape, noise=noise, generator=gen(4))
    b = ddim_sample_loop(net, d, noise.shape, noise=noise, generator=gen(5))
    assert torch.equal(a, b)
    c = p_sample_loop(net, d, noise.shape, noise=noise, generator=gen(4))
    assert not torch.allclose(a, c)


# --- guidance -------------------------------------------------------------------------------------


def test_null_text_and_drop_text():
    tokens, mask = text_batch()
    null_tokens, null_mask = null_text_like(tokens, mask)
    assert null_tokens.tolist() == [[BOS, NULL, EOS]] * 2 and null_mask.all()

    same_tokens, same_mask = drop_text(tokens, mask, 0.0, gen(0))
    assert torch.equal(same_tokens, tokens) and torch.equal(same_mask, mask)
    all_tokens, all_mask = drop_text(tokens, mask, 1.0, gen(0))
    assert all_tokens.tolist() == [[BOS, NULL, EOS, PAD, PAD, PAD]] * 2
    assert all_mask.tolist() == [[True] * 3 + [False] * 3] * 2
    # A batch shorter than the null text grows so the null text keeps its EOS.
    short_tokens, short_mask = drop_text(torch.tensor([[BOS, EOS]]), torch.tensor([[True, True]]), 1.0)
    assert short_tokens.tolist() == [[BOS, NULL, EOS]] and short_mask.all()

    many = torch.tensor([[BOS, 9, EOS]]).repeat(2000, 1)
    dropped, _ = drop_text(many, many != PAD, 0.1, gen(1))
    rate = (dropped[:, 1] == NULL).float().mean().item()
    assert 0.07 < rate < 0.13
    assert torch.equal(dropped, drop_text(many, many != PAD, 0.1, gen(1))[0])


def test_guided_combines_one_batched_forward():
    torch.manual_seed(0)
    toy = TextToy()
    tokens, mask = text_batch()
    null = null_kwargs(tokens, mask)
    x = torch.randn(2, C, H, W, generator=gen(0))
    t = torch.tensor([5, 900])
    with torch.no_grad():
        cond = toy(x, t, tokens, mask)
        uncond = toy(x, t, **null)
        toy.calls.clear()
        out = guided(toy, 2.0, null)(x, t, tokens=tokens, mask=mask)
    assert len(toy.calls) == 1 and toy.calls[0].shape == (4, 6)  # null text padded to length 6
    expected_eps = cond[:, :C] + 2.0 * (cond[:, :C] - uncond[:, :C])
    torch.testing.assert_close(out[:, :C], expected_eps)
    torch.testing.assert_close(out[:, C:], cond[:, C:])


def test_guidance_zero_is_the_conditional_model():
    torch.manual_seed(0)
    toy = TextToy()
    tokens, mask = text_batch()
    d = create_diffusion(DiffusionConfig())
    kwargs = {"tokens": tokens, "mask": mask}
    assert guided(toy, 0.0, null_kwargs(tokens, mask)) is toy

    plain = ddim_sample_loop(toy, d.respace("5"), (2, C, H, W), model_kwargs=kwargs, generator=gen(0))
    toy.calls.clear()
    zero = sample(toy, d, (2, C, H, W), steps="5", guidance=0.0, model_kwargs=kwargs, generator=gen(0))
    assert torch.equal(plain, zero)
    assert len(toy.calls) == 5
    assert all(call.shape[0] == 2 and not (call == NULL).any() for call in toy.calls)

    toy.calls.clear()
    strong = sample(toy, d, (2, C, H, W), steps="5", guidance=3.0, model_kwargs=kwargs, generator=gen(0))
    assert len(toy.calls) == 5 and all(call.shape[0] == 4 for call in toy.calls)
    assert all((call[2:, 1] == NULL).all() for call in toy.calls)
    assert not torch.allclose(strong, plain)


def test_guided_superres_duplicates_low_res():
    seen = {}

    def model(x, t, tokens, mask, low_res):
        seen["low_res"] = low_res
        return torch.zeros(x.shape[0], 2 * C, *x.shape[2:])

    tokens, mask = text_batch()
    low_res = torch.randn(2, C, 4, 4)
    guided(model, 1.5, null_kwargs(tokens, mask))(
        torch.zeros(2, C, H, W), torch.zeros(2, dtype=torch.long), tokens=tokens, mask=mask, low_res=low_res
    )
    assert torch.equal(seen["low_res"], torch.cat([low_res, low_res]))
