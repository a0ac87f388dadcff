"""The glyph canvas: the transcript drawn in one plain reference font, as an extra input channel.

A model that only reads character tokens must learn what every letter looks like before it can
draw one; with the canvas it sees the letters' shapes, in a fixed layout (each line centred, one
equal cell per character, the whole block centred), and learns to restyle and place them. The
canvas is a pure function of the tokens, computed inside the network, so classifier-free guidance
needs nothing new: the null transcript has no characters and draws a blank canvas, in training
(text dropout) and in sampling alike.

The letter shapes come from an atlas, one bitmap per token id, rendered once from a font that ships
as a Python package. Pixels are drawn by lookup at SUPERSAMPLE x the side and averaged down, so
small canvases are anti-aliased and the cost is a gather per pixel, whatever the transcript's length.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from glyphgen.data.fonts import load_font, package_font
from glyphgen.text.alphabet import BOS, EOS, NULL, PAD

REFERENCE_FONT = "SourceSansPro-Bold.ttf"
"""The atlas's font: a plain, bold sans serif (the `font-source-sans-pro` dependency)."""
ATLAS_HEIGHT, ATLAS_WIDTH = 32, 24
"""One atlas cell in pixels; a canvas cell keeps its aspect ratio."""
_FONT_SIZE, _BASELINE = 30, 25
"""Font size and baseline row in an atlas cell: capitals and descenders both fit."""
MARGIN = 0.875
"""Share of the canvas side the text block may fill."""
MAX_CELL = 0.5
"""A cell is at most this share of the side high, so one or two letters are not drawn huge."""


@lru_cache(maxsize=4)
def glyph_atlas(alphabet: str, specials: int) -> torch.Tensor:
    """[specials + len(alphabet), ATLAS_HEIGHT, ATLAS_WIDTH] ink in [0, 1], one cell per token id;
    special tokens, whitespace and characters the font lacks are blank. A glyph wider than a cell is
    squeezed to fit, so every character keeps its own cell. Cached: clone before changing it."""
    font = load_font(package_font(REFERENCE_FONT), _FONT_SIZE)
    atlas = np.zeros((specials + len(alphabet), ATLAS_HEIGHT, ATLAS_WIDTH), dtype=np.float32)
    for i, ch in enumerate(alphabet):
        if ch.isspace() or font.getmask(ch).getbbox() is None:
            continue
        x0, _, x1, _ = font.getbbox(ch, anchor="ls")
        wide = max(ATLAS_WIDTH, x1 - x0 + 2)
        img = Image.new("L", (wide, ATLAS_HEIGHT), 0)
        ImageDraw.Draw(img).text((wide / 2 - (x0 + x1) / 2, _BASELINE), ch, fill=255, font=font, anchor="ls")
        if wide > ATLAS_WIDTH:
            img = img.resize((ATLAS_WIDTH, ATLAS_HEIGHT), Image.Resampling.BOX)
        atlas[specials + i] = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(atlas)


class GlyphCanvas(nn.Module):
    """canvas(tokens [B, L]) -> [B, 1, side, side] in [-1, 1]: the transcript's characters drawn at
    +1 on -1. Every token that is not PAD, BOS, EOS, NULL or the newline takes one cell of its line,
    unknown characters included (blank), so the layout counts what the encoder counts."""

    SUPERSAMPLE_SIDE = 256
    """Lookups are made at up to 4 x the side, at most this many pixels across."""

    def __init__(self, side: int, alphabet: str, specials: int, newline_id: int):
        super().__init__()
        self.side = side
        self.newline_id = newline_id
        self.scale = max(1, min(4, self.SUPERSAMPLE_SIDE // side))
        # Saved with the weights, so a bundle draws the glyphs it was trained with whatever font
        # version is installed. Made on the default device (bundles load on the meta device).
        self.register_buffer("atlas", glyph_atlas(alphabet, specials).to(torch.empty(0).device, copy=True))

    def forward(self, tokens: torch.Tensor, text_box: torch.Tensor | None = None) -> torch.Tensor:
        """With `text_box` [B, 4] (x0, y0, x1, y1 as fractions of the side; all zero for none), each
        canvas's ink is moved and stretched onto that box: training aligns the canvas with where
        the image's text really is, so the network learns to draw over it."""
        ink = self._draw(tokens)
        if text_box is not None:
            ink = self._move(ink, text_box)
        ink = F.avg_pool2d(ink, self.scale) if self.scale > 1 else ink
        return ink * 2 - 1

    @staticmethod
    def _move(ink: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        n = ink.shape[-1]
        where = ink[:, 0] > 0.5
        index = torch.arange(n, device=ink.device)

        def extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # normalised [-1, 1] edges
            lo = torch.where(mask, index, n).amin(1)
            hi = torch.where(mask, index, -1).amax(1) + 1
            return lo / n * 2 - 1, hi / n * 2 - 1

        (sx0, sx1), (sy0, sy1) = extent(where.any(1)), extent(where.any(2))
        box = box.float() * 2 - 1
        tx0, ty0, tx1, ty1 = box.unbind(1)
        move = (tx1 > tx0) & (ty1 > ty0) & where.flatten(1).any(1)
        ax = torch.where(move, (sx1 - sx0) / (tx1 - tx0).clamp(min=1e-6), 1.0)
        ay = torch.where(move, (sy1 - sy0) / (ty1 - ty0).clamp(min=1e-6), 1.0)
        bx, by = torch.where(move, sx0 - ax * tx0, 0.0), torch.where(move, sy0 - ay * ty0, 0.0)
        zero = torch.zeros_like(ax)
        theta = torch.stack([torch.stack([ax, zero, bx], 1), torch.stack([zero, ay, by], 1)], 1)
        grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
        return F.grid_sample(ink, grid, align_corners=False)

    def _draw(self, tokens: torch.Tensor) -> torch.Tensor:
        """The canvas's ink in [0, 1] at `scale` x the side: [B, 1, n, n]."""
        batch, length = tokens.shape
        device = tokens.device
        newline = tokens == self.newline_id
        cell = ~newline
        for special in (PAD, BOS, EOS, NULL):
            cell &= tokens != special
        line = torch.cumsum(newline.long(), 1)  # the line each token is on
        lines = torch.where(cell, line + 1, 0).amax(1)  # lines up to the last one with a character
        per_line = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
        per_line.scatter_add_(1, line, cell.long())
        position = torch.arange(length, device=device).expand(batch, length)
        first = torch.full((batch, length + 1), length, dtype=torch.long, device=device)
        first.scatter_reduce_(1, line, torch.where(cell, position, length), "amin")

        # Cell size per sample: the widest line and the line count both fit, in cells of the
        # atlas's aspect ratio.
        fill = MARGIN * self.side
        aspect = ATLAS_WIDTH / ATLAS_HEIGHT
        widest = per_line.amax(1).clamp(min=1).float()
        height = torch.minimum(fill / lines.clamp(min=1).float(), fill / (widest * aspect))
        height = height.clamp(max=MAX_CELL * self.side)[:, None, None]
        width = height * aspect
        top = (self.side - lines[:, None, None] * height) / 2

        n = self.side * self.scale
        centres = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / self.scale
        y, x = centres[None, :, None], centres[None, None, :]
        row = torch.floor((y - top) / height)  # [B, n, 1]
        row_ok = (row >= 0) & (row < lines[:, None, None])
        row_idx = row.clamp(0, length).long()
        row_len = per_line.gather(1, row_idx[:, :, 0])[:, :, None]  # characters on that row
        left = (self.side - row_len * width) / 2
        col = torch.floor((x - left) / width)  # [B, n, n]
        ok = row_ok & (col >= 0) & (col < row_len)
        start = first.gather(1, row_idx[:, :, 0])[:, :, None]
        index = (start + col.clamp(min=0).long()).clamp(max=length - 1)
        token = tokens.gather(1, index.view(batch, -1)).view(batch, n, n)
        v = ((y - top - row * height) / height * ATLAS_HEIGHT).long().clamp(0, ATLAS_HEIGHT - 1)
        u = ((x - left - col * width) / width * ATLAS_WIDTH).long().clamp(0, ATLAS_WIDTH - 1)
        return (self.atlas[token, v.expand(batch, n, n), u] * ok)[:, None].float()


def text_box(boxes: torch.Tensor) -> torch.Tensor:
    """The union [B, 4] of per-token ink boxes [B, L, 4] (zeros: no box); zeros where none has one."""
    has = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    big = torch.finfo(boxes.dtype).max
    lo = torch.where(has[..., None], boxes[..., :2], big).amin(1)
    hi = torch.where(has[..., None], boxes[..., 2:], -big).amax(1)
    return torch.where(has.any(1, keepdim=True), torch.cat([lo, hi], 1), 0.0)
