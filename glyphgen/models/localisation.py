"""The character localisation loss: each character token's attention should fall on its own glyph.

In a weave layer every text token queries the image (image-to-text attention), so each token holds a
distribution over image positions. The synthetic renderer knows each character's ink box; this loss
is the negative log of the attention mass a character token puts inside its box, averaged over the
characters that have one and over the weave layers. UDiffText (Zhao & Lian 2023) reports that a
loss of this kind, on cross-attention maps and character masks, helps a diffusion model spell.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from glyphgen.models.attention import WeaveAttention


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every weave layer of `model` appends its image-to-text attention weights
    [B, L, H*W] to the yielded list on each forward."""
    layers = [m for m in model.modules() if isinstance(m, WeaveAttention)]
    maps: list[torch.Tensor] = []
    for layer in layers:
        layer.record = maps
    try:
        yield maps
    finally:
        for layer in layers:
            layer.record = None


def box_masks(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Boxes [B, L, 4] (x0, y0, x1, y1 as fractions of the image side) -> masks [B, L, side*side]
    of the feature cells each box touches (a box smaller than a cell still marks the cell it is in)."""
    centres = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) / side
    half = 0.5 / side
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    cols = (centres + half > x0) & (centres - half < x1)  # cells overlapping [x0, x1]
    rows = (centres + half > y0) & (centres - half < y1)
    return (rows[..., :, None] & cols[..., None, :]).flatten(-2).to(boxes.dtype)


def localisation_loss(maps: list[torch.Tensor], boxes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample loss [B]: mean over weave maps and boxed characters of -log(attention mass in the
    box). `boxes` [B, L, 4] is aligned with the tokens; a token without a box has x1 <= x0. A sample
    without any box contributes 0."""
    valid = (boxes[..., 2] > boxes[..., 0]).to(boxes.dtype)  # [B, L]
    count = valid.sum(dim=1)
    total = boxes.new_zeros(boxes.shape[0])
    for weights in maps:
        side = round(weights.shape[-1] ** 0.5)
        inside = (weights.float() * box_masks(boxes.float(), side)).sum(dim=-1)  # [B, L]
        total = total + (-torch.log(inside + eps) * valid).sum(dim=1)
    return total / (count.clamp(min=1) * max(len(maps), 1))
