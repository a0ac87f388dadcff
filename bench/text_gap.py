"""How much does a bundle use its text? The text gap, a cheap signal long before the OCR reads anything.

For the same noised images, the network predicts x0 once with each image's own transcript and once
with another image's (a different word). The gap is the mean x0-space MSE with the wrong text minus
the MSE with the right one, per timestep: 0 for a model that ignores the text, growing as it learns
to draw what it is asked. Early in a CPU run the OCR reads nothing (CER ~1), but the gap already
separates recipes, at the cost of a few forward passes.

    python bench/text_gap.py runs/learn-cpu-v-minsnr/bundle runs/learn-cpu-pooled/bundle

The images are the first `--images` of the training shards in file order (a probe of what the model
has learnt to draw, not a held-out score).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from glyphgen.data.loader import LoaderConfig, make_loader
from glyphgen.inference.bundle import load_bundle


def other_texts(texts: list[str]) -> list[int]:
    """For each sample, the index of the nearest later sample (cyclically) whose text differs."""
    n = len(texts)
    out = []
    for i, text in enumerate(texts):
        j = next((k % n for k in range(i + 1, i + n) if texts[k % n] != text), i)
        out.append(j)
    return out


@torch.no_grad()
def text_gap(bundle, batch: dict, timesteps: list[int], seed: int) -> dict[int, tuple[float, float]]:
    """{t: (mse with the right text, mse with a wrong one)} in x0 space on [-1, 1]."""
    x0 = batch["image"].float() / 127.5 - 1
    tokens, mask = batch["tokens"], batch["mask"]
    swap = torch.tensor(other_texts(batch["text"]))
    differs = swap != torch.arange(len(swap))
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for step in timesteps:
        t = torch.full((len(x0),), step, dtype=torch.long)
        x_t = bundle.diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
        mse = []
        for tok, m in ((tokens, mask), (tokens[swap], mask[swap])):
            output = bundle.net(x_t, t, tokens=tok, mask=m)
            pred = bundle.diffusion.p_from_output(output, x_t, t, clip_denoised=False)["pred_x0"]
            mse.append((pred - x0).square().mean(dim=(1, 2, 3))[differs].mean().item())
        out[step] = (mse[0], mse[1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--shards", default="data_shards/words-32")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--timesteps", type=int, nargs="+", default=[200, 400, 600, 800])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    print("| bundle | " + " | ".join(f"t={t}: right / wrong / gap" for t in args.timesteps) + " |")
    print("|---|" + "---:|" * len(args.timesteps))
    for path in args.bundles:
        bundle = load_bundle(path, "cpu")
        cfg = LoaderConfig(
            shards=args.shards,
            resolution=bundle.resolution,
            batch_size=args.images,
            num_workers=0,
            shuffle_buffer=0,
        )
        batch = next(iter(make_loader(cfg, bundle.tokenizer)))
        gaps = text_gap(bundle, batch, args.timesteps, args.seed)
        cells = [f"{r:.4f} / {w:.4f} / **{w - r:.4f}**" for r, w in gaps.values()]
        print(f"| {path} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
