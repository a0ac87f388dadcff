"""Where a bundle's channel spread is: a tint over each image or grain, background or letters;
how flat the training images are; and the steps where min-SNR's gamma starts to cap the weight."""

import io
import sys

import numpy as np
from PIL import Image

from glyphgen.data.shards import shard_members
from glyphgen.eval.metrics import mean_channel_spread
from glyphgen.inference.bundle import load_bundle

words = [line.strip() for line in open("configs/prompts/learn-words.txt") if line.strip()]
for path in sys.argv[1:]:
    b = load_bundle(path, device="cpu")
    images = b.sample(words, 12, seed=0, batch_size=40).numpy().astype(np.float64) / 255  # N, C, H, W
    means = images.mean(axis=(2, 3))  # each image's channel means
    untinted = images - (means - means.mean(1, keepdims=True))[:, :, None, None]
    grey = images.mean(1)
    background = np.abs(grey - np.median(grey.reshape(len(grey), -1), axis=1)[:, None, None]) < 0.1
    spread = images.max(1) - images.min(1)
    print(
        f"{path}: spread {mean_channel_spread(images, axis=1):.4f}, tint {mean_channel_spread(means):.4f}, "
        f"without the tint {mean_channel_spread(untinted, axis=1):.4f}; background ({background.mean():.0%} "
        f"of the pixels) {spread[background].mean():.4f}, the rest {spread[~background].mean():.4f}"
    )

samples = shard_members("data_shards/words-32/shard-000000.tar", ("png",))
data = (
    np.stack(
        [np.asarray(Image.open(io.BytesIO(samples[k]["png"])).convert("RGB")) for k in sorted(samples)[:300]]
    )
    / 255
)
grey = data.mean(-1)
local = np.lib.stride_tricks.sliding_window_view(grey, (3, 3), axis=(1, 2)).std(axis=(-2, -1))
print(
    f"300 training images: spread {mean_channel_spread(data):.4f}, median 3x3 local std {np.median(local):.4f}"
)

abar = load_bundle(sys.argv[1], device="cpu").diffusion.array("alphas_cumprod").double()
snr = abar / (1 - abar)
print(
    f"steps with SNR >= 5: {int((snr >= 5).sum())}, >= 20: {int((snr >= 20).sum())}; SNR at step 39: {snr[39]:.0f}"
)
