"""Where a bundle's colour cast comes from: the channel spread of its samples, split into the part
each image's channel means explain (a tint over the whole image) and what is left (pixel noise),
for the bundle's sampler started from its noise as drawn and from the same noise with each image's
per-channel means made equal (no tint in the start).

    python bench/colour_cast.py runs/learn-cpu/bundle runs/plain/b1

The spread is the quality run's `channel_spread` (mean over pixels of the largest minus the smallest
channel, on [0, 1]); the tint is the same measure on the per-image channel means; the rest is the
spread of the images once each channel is shifted to the image's grey mean.
"""

from __future__ import annotations

import argparse

import torch

from glyphgen.diffusion import sample
from glyphgen.diffusion.pixels import to_uint8
from glyphgen.eval.metrics import mean_channel_spread
from glyphgen.inference.bundle import load_bundle

PROMPTS = ["THE", "AND", "IN", "OF"]


def spread(x: torch.Tensor) -> float:
    """The quality run's channel spread of [N, C, H, W] images on [0, 1] (all of one size)."""
    return mean_channel_spread(x.double().numpy(), axis=1)


def untinted(x: torch.Tensor) -> torch.Tensor:
    """`x` with each image's channels shifted to a common mean (the image's grey level)."""
    means = x.mean((2, 3), keepdim=True)
    return x - means + means.mean(1, keepdim=True)


def decompose(x: torch.Tensor) -> dict[str, float]:
    """Spread of `x`, of its per-image channel means (the tint) and of `x` without that tint."""
    return {
        "spread": spread(x),
        "tint": spread(x.mean((2, 3), keepdim=True)),
        "without_tint": spread(untinted(x)),
    }


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", help="ddpm | ddim | dpmpp2m (default: the bundle's)")
    parser.add_argument("--steps", help='respacing such as "100" or "ddim25" (default: the bundle\'s)')
    args = parser.parse_args()
    texts = [t for t in PROMPTS for _ in range(args.n)]
    for path in args.bundles:
        bundle = load_bundle(path, "cpu")
        options = bundle.options(sampler=args.sampler, steps=args.steps)
        tokens, mask = bundle.tokenizer.batch(texts)
        r, c = bundle.config.model.resolution, bundle.config.model.in_channels
        noise = torch.randn(len(texts), c, r, r, generator=torch.Generator().manual_seed(args.seed))
        for start, x_T in (("noise as drawn", noise), ("noise without tint", untinted(noise))):
            out = sample(
                bundle.net,
                bundle.diffusion,
                noise.shape,
                **options.sampler_kwargs(),
                model_kwargs={"tokens": tokens, "mask": mask},
                noise=x_T,
                generator=torch.Generator().manual_seed(args.seed + 1),  # later noise (DDPM)
            )
            images = to_uint8(out).float() / 255  # as the saved images
            parts = ", ".join(f"{k} {v:.4f}" for k, v in decompose(images).items())
            print(f"{path} ({options.sampler} {options.steps}, {start}): {parts}", flush=True)


if __name__ == "__main__":
    main()
