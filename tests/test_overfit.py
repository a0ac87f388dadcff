"""End to end on the model side: the tiny weave U-Net, trained with the hybrid loss on one batch of
text rendered by the synthetic generator, overfits it; then respaced guided sampling runs on it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from glyphgen.config import load_config
from glyphgen.data.fonts import discover_fonts
from glyphgen.data.synthetic import SyntheticConfig, SyntheticRenderer
from glyphgen.diffusion import DiffusionConfig, create_diffusion, sample
from glyphgen.models.registry import create_model
from glyphgen.text.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def rendered_batch():
    cfg = load_config(SyntheticConfig, values={"resolution": 32})
    renderer = SyntheticRenderer(cfg, discover_fonts(cfg.fonts, cfg.alphabet))
    samples = [s for s in map(renderer.render_sample, range(8)) if hasattr(s, "png")][:4]
    images = [np.asarray(Image.open(io.BytesIO(s.png)).convert("RGB")) for s in samples]
    x0 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    tokens, mask = CharTokenizer().batch([s.text for s in samples])
    return x0, tokens, mask


@pytest.mark.slow
def test_tiny_model_overfits_rendered_text_with_the_hybrid_loss(rendered_batch):
    torch.manual_seed(0)
    x0, tokens, mask = rendered_batch
    model = create_model("tiny")
    diffusion = create_diffusion(DiffusionConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # One fixed batch: fixed timesteps and noise, so the loss can only fall by fitting it.
    t = torch.tensor([50, 300, 600, 900])
    noise = torch.randn_like(x0)
    losses = []
    for _ in range(150):
        terms = diffusion.training_losses(model, x0, t, {"tokens": tokens, "mask": mask}, noise=noise)
        loss = terms["loss"].mean()
        assert torch.isfinite(loss) and torch.isfinite(terms["vlb"]).all()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])

    model.eval()
    for steps in ("1", "50"):
        out = sample(
            model,
            diffusion,
            (2, 3, 32, 32),
            sampler="ddim",
            steps=steps,
            guidance=2.0,
            model_kwargs={"tokens": tokens[:2], "mask": mask[:2]},
            generator=torch.Generator().manual_seed(0),
        )
        assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
