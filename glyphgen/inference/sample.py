"""Sampling images from bundles: prompt checks, batching, seeds, and the base -> superres cascade.

Reproducibility: one `torch.Generator` seeded with `seed` (on the CPU, so CPU and GPU runs start
from the same noise) feeds every batch of a call in order, so the same seed, prompts, `n` and
`batch_size` give the same images. Images are ordered prompt by prompt: `n` of the first prompt,
then `n` of the second, ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from glyphgen.diffusion import Progress, SamplingOptions, sample, with_options

if TYPE_CHECKING:
    from glyphgen.inference.bundle import Bundle
    from glyphgen.text.tokenizer import CharTokenizer

ImagesIn = torch.Tensor | Sequence[Image.Image]
"""Images handed to a superres bundle: uint8 [N, C, H, W] or PIL images."""


def check_prompts(texts: Sequence[str], tokenizer: CharTokenizer) -> None:
    """One-line ValueErrors for prompts the model cannot be given: empty, longer than its context,
    or with characters outside its alphabet (rather than silently truncating or writing <unk>)."""
    if not texts:
        raise ValueError("no prompt given")
    alphabet = set(tokenizer.alphabet)
    room = tokenizer.max_length - 2  # BOS and EOS take two of the context's tokens
    for text in texts:
        shown = repr(text if len(text) <= 40 else text[:37] + "...")
        if not text.strip():
            raise ValueError("empty prompt: give the text to write")
        if len(text) > room:
            raise ValueError(
                f"prompt {shown} is {len(text)} characters long; this model reads at most {room} "
                f"({tokenizer.max_length} tokens with BOS and EOS)"
            )
        unknown = sorted(set(text) - alphabet)
        if unknown:
            raise ValueError(
                f"prompt {shown} has characters outside the model's alphabet: {', '.join(map(repr, unknown))}"
            )


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 [0, 255], on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (as the training stages feed images to the network)."""
    return x.float() / 127.5 - 1


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 [N, C, H, W] -> RGB (or L) PIL images."""
    arrays = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]


def from_pil(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> uint8 [N, 3, H, W]."""
    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1) for im in images])


def check_low_res(bundle: Bundle, low_res: ImagesIn | None, count: int) -> torch.Tensor | None:
    """The low-res images a superres bundle upsamples, as uint8 [count, C, h, w]; one-line errors
    when they are missing, unexpected, too few or too many, or of the wrong size."""
    cfg = bundle.config.model
    if not cfg.superres:
        if low_res is not None:
            raise ValueError(
                f"{bundle.name} is a base model ({bundle.config.stage}): it takes no low-res images"
            )
        return None
    if low_res is None:
        raise ValueError(f"{bundle.name} is a super-resolution model: it needs the base model's images")
    images = low_res if isinstance(low_res, torch.Tensor) else from_pil(low_res)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"low-res images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) != count:
        raise ValueError(f"{count} images to upsample but {len(images)} low-res images given")
    side = cfg.resolution // 2
    if tuple(images.shape[-2:]) != (side, side):
        raise ValueError(
            f"{bundle.name} upsamples {side} px images to {cfg.resolution} px, "
            f"got {images.shape[-1]}x{images.shape[-2]} px"
        )
    return images


def generate(
    bundle: Bundle,
    texts: Sequence[str],
    n: int = 1,
    options: SamplingOptions | None = None,
    low_res: ImagesIn | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """`n` images per prompt as float [-1, 1] [len(texts) * n, C, H, W], on the bundle's device,
    drawn with `options` (unset fields: the bundle's diffusion config)."""
    check_prompts(texts, bundle.tokenizer)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    chosen = bundle.options(options)
    diffusion = bundle.diffusion.respace(chosen.steps)
    expanded = [t for t in texts for _ in range(n)]
    lows = check_low_res(bundle, low_res, len(expanded))
    cfg, device = bundle.config.model, bundle.device
    generator = torch.Generator().manual_seed(chosen.seed)
    batches = range(0, len(expanded), chosen.batch_size)
    total = len(batches) * diffusion.num_steps
    out = []
    for b, start in enumerate(batches):
        chunk = expanded[start : start + chosen.batch_size]
        tokens, mask = bundle.tokenizer.batch(chunk)
        kwargs = {"tokens": tokens.to(device), "mask": mask.to(device)}
        if lows is not None:
            kwargs["low_res"] = to_unit(lows[start : start + len(chunk)]).to(device)
        done = b * diffusion.num_steps
        out.append(
            sample(
                bundle.net,
                diffusion,
                (len(chunk), cfg.in_channels, cfg.resolution, cfg.resolution),
                **{**chosen.sampler_kwargs(), "steps": None},  # respaced above, once for every batch
                model_kwargs=kwargs,
                generator=generator,
                device=device,
                progress=None if progress is None else lambda i, _t, done=done: progress(done + i, total),
            )
        )
    return torch.cat(out)


def check_cascade(base: Bundle, superres: Bundle | None) -> None:
    """The base must be a base model and the superres a superres model at twice its resolution."""
    if base.config.model.superres:
        raise ValueError(f"{base.name} is a super-resolution model; pass it as the superres bundle")
    if superres is None:
        return
    if not superres.config.model.superres:
        raise ValueError(
            f"{superres.name} is a base model ({superres.config.stage}), not a super-resolution one"
        )
    low, base_res = superres.config.model.resolution // 2, base.config.model.resolution
    if low != base_res:
        raise ValueError(
            f"{superres.name} upsamples {low} -> {superres.config.model.resolution} px "
            f"but the base {base.name} makes {base_res} px images"
        )


def cascade(
    base: Bundle,
    superres: Bundle | None,
    texts: Sequence[str],
    n: int = 1,
    options: SamplingOptions | None = None,
    sr_guidance: float | None = None,
    progress: Callable[[str], Progress | None] | None = None,
) -> torch.Tensor:
    """Base samples, then (if `superres` is given) each upsampled with the same prompt: uint8
    [len(texts) * n, C, H, W]. Both stages use `options`, except that the superres guidance is its
    own (`sr_guidance`, default: its bundle's). `progress(stage name)` may return a step callback."""
    check_cascade(base, superres)
    bar = progress or (lambda _name: None)
    images = base.sample(texts, n, options, progress=bar("base"))
    if superres is None:
        return images
    expanded = [t for t in texts for _ in range(n)]
    sr_options = superres_options(options, sr_guidance)
    return superres.sample(expanded, 1, sr_options, low_res=images, progress=bar("superres"))


def superres_options(options: SamplingOptions | None, sr_guidance: float | None) -> SamplingOptions:
    """The base's options for the superres stage, but with its own guidance (None: its bundle's)."""
    return dataclasses.replace(with_options(options), guidance=sr_guidance)
