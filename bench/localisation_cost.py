"""The cost of the character localisation loss: a training step (forward + backward of the hybrid
diffusion loss) of a model size with and without recording the weave attention and adding the loss,
interleaved in one process so that the ratio holds on a shared machine.

Usage: python bench/localisation_cost.py [--size tiny] [--batch 32] [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from glyphgen.diffusion import DiffusionConfig, create_diffusion
from glyphgen.models.localisation import localisation_loss, recording_attention
from glyphgen.models.registry import model_config
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import CharTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = model_config(args.size)
    model = UNet(cfg).train()
    diffusion = create_diffusion(DiffusionConfig(parameterization="v", loss_weighting="min_snr"))
    tokens, mask = CharTokenizer().batch(["quartz"] * args.batch)
    boxes = torch.zeros(*tokens.shape, 4)
    boxes[:, 1:7] = torch.tensor([0.1, 0.3, 0.25, 0.7])
    x0 = torch.rand(args.batch, cfg.in_channels, cfg.resolution, cfg.resolution) * 2 - 1
    t = torch.randint(0, diffusion.num_steps, (args.batch,))

    def step(localise: bool) -> float:
        start = time.perf_counter()
        with recording_attention(model) if localise else contextlib.nullcontext() as maps:
            loss = diffusion.training_losses(model, x0, t, {"tokens": tokens, "mask": mask})["loss"]
        if localise:
            loss = loss + 0.1 * localisation_loss(maps, boxes)
        loss.mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {False: [], True: []}
    for _ in range(3):  # warm-up
        step(False), step(True)
    for _ in range(args.repeats):
        for localise in (False, True):
            times[localise].append(step(localise))
    plain, local = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"{args.size}, batch {args.batch}: median step {plain * 1000:.0f} ms plain, "
        f"{local * 1000:.0f} ms with localisation: x{local / plain:.3f} ({args.repeats} interleaved runs)"
    )


if __name__ == "__main__":
    main()
