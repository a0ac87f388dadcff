"""How much of the noise at step t a bundle leaves in its x0 prediction, on 64 training images."""

import io
import sys

import numpy as np
import torch
from PIL import Image

from glyphgen.data.shards import shard_members
from glyphgen.inference.bundle import load_bundle

samples = shard_members("data_shards/words-32/shard-000000.tar", ("png", "txt"))
keys = sorted(samples)[:64]
x0 = torch.tensor(
    np.stack([np.asarray(Image.open(io.BytesIO(samples[k]["png"])).convert("RGB")) for k in keys])
)
x0 = x0.permute(0, 3, 1, 2).float() / 127.5 - 1
prompts = [samples[k]["txt"].decode() for k in keys]
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
box = torch.ones(1, 1, 5, 5) / 25


def fine(x):  # x minus its 5x5 local mean, borders cut
    return (x - torch.nn.functional.conv2d(x.flatten(0, 1)[:, None], box, padding=2).view(x.shape))[
        ..., 4:-4, 4:-4
    ]


def colour(e):  # standard deviation of the deviation from the channels' mean, on [0, 1]
    return (e - e.mean(1, keepdim=True)).std().item() / 2


for path in sys.argv[1:]:
    b = load_bundle(path, device="cpu")
    tokens, mask = b.tokenizer.batch(prompts)
    print(path)
    for step in (5, 20, 39, 79, 159, 399, 599):
        t = torch.full((len(x0),), step)
        sigma = (1 - b.diffusion.array("alphas_cumprod")[step]).sqrt().item()
        x_t = b.diffusion.q_sample(x0, t, eps)
        with torch.no_grad():
            pred = b.diffusion.p_from_output(
                b.net(x_t, t, tokens=tokens, mask=mask), x_t, t, clip_denoised=False
            )["pred_x0"]
        error, noise = fine(pred - x0), fine(sigma * eps)
        gain = ((error * noise).sum() / (noise * noise).sum()).item()
        print(
            f"  t={step:3d} sigma={sigma:.3f} gain={gain:+.3f} colour: kept noise {colour(gain * noise):.4f}, rest {colour(error - gain * noise):.4f}"
        )
