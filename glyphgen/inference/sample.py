"""What sampling needs besides a network: prompt checks and conversions between uint8 tensors and
PIL images (`glyphgen.diffusion.pixels` converts to and from the network's [-1, 1]). `Bundle` (bundle.py) samples one bundle, `Cascade`
(cascade.py) a base followed by super-resolution bundles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

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


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 [N, C, H, W] -> RGB (or L) PIL images."""
    arrays = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]


def from_pil(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> uint8 [N, 3, H, W]."""
    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1) for im in images])
