"""The glyph canvas: the transcript drawn in one plain reference font, as an extra input channel.

A model that only reads character tokens must learn what every letter looks like before it can
draw one; with the canvas it sees the letters' shapes, set as plain text (each line centred, each
character as wide as the font's advance, the block centred and fitted to the image), and learns to
restyle them. Training can move each canvas onto where its image's text really is
(`align_glyphs`), so the network learns to draw over the letters it is shown. The canvas is a pure
function of the tokens, computed inside the network, so classifier-free guidance needs nothing new:
the null transcript has no characters and draws a blank canvas, in training (text dropout) and in
sampling alike.

The letter shapes come from an atlas, one bitmap per token id stretched over its advance, rendered
once from a font that ships as a Python package and then stored with the weights. Pixels are drawn
by lookup at up to 4 x the side and averaged down, so small canvases are anti-aliased and the cost
is one search and one gather per pixel, whatever the transcript's length.
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
"""The atlas's default font: a plain, bold sans serif (the `font-source-sans-pro` dependency)."""
ATLAS_HEIGHT, ATLAS_WIDTH = 32, 24
"""One atlas bitmap in pixels: a line's height, and the columns its advance is stretched over."""
_FONT_SIZE, _BASELINE = 30, 25
"""Font size and baseline row in an atlas bitmap: capitals and descenders both fit."""
UNKNOWN_ADVANCE = 0.5
"""Advance, in line heights, of a character the alphabet lacks (drawn blank)."""
MARGIN = 0.875
"""Share of the canvas side the text block may fill."""
LINE_HEIGHT = 0.5
"""The default largest line height, as a share of the side, so one or two letters are not drawn huge."""


@lru_cache(maxsize=4)
def glyph_atlas(
    alphabet: str, specials: int, unknown: int, font_file: str = REFERENCE_FONT
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ink [V, ATLAS_HEIGHT, ATLAS_WIDTH] in [0, 1], advance [V] in line heights) for the V =
    specials + len(alphabet) token ids, drawn in the packaged font `font_file`: each character
    drawn over its advance width and stretched to the bitmap's width. Specials and the newline take
    no room; `unknown` (UNK) and characters the font lacks take UNKNOWN_ADVANCE, blank. Cached:
    clone before changing them."""
    font = load_font(package_font(font_file), _FONT_SIZE)
    ink = np.zeros((specials + len(alphabet), ATLAS_HEIGHT, ATLAS_WIDTH), dtype=np.float32)
    advance = np.zeros(specials + len(alphabet), dtype=np.float32)
    advance[unknown] = UNKNOWN_ADVANCE
    for i, ch in enumerate(alphabet, start=specials):
        if ch == "\n":
            continue
        drawn = ch.isspace() or font.getmask(ch).getbbox() is not None
        width = font.getlength(ch)
        if not drawn or width < 1:
            advance[i] = UNKNOWN_ADVANCE
            continue
        advance[i] = width / ATLAS_HEIGHT
        img = Image.new("L", (round(width), ATLAS_HEIGHT), 0)
        ImageDraw.Draw(img).text((0, _BASELINE), ch, fill=255, font=font, anchor="ls")
        img = img.resize((ATLAS_WIDTH, ATLAS_HEIGHT), Image.Resampling.BILINEAR)
        ink[i] = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(ink), torch.from_numpy(advance)


class GlyphCanvas(nn.Module):
    """canvas(tokens [B, L], text_box=None) -> [B, 1, side, side] in [-1, 1]: the transcript drawn
    at +1 on -1. Every token that is not PAD, BOS, EOS, NULL or the newline takes its advance on its
    line, unknown characters included (blank), so the layout counts what the encoder counts."""

    SUPERSAMPLE_SIDE = 256
    """Lookups are made at up to 4 x the side, at most this many pixels across."""

    def __init__(
        self,
        side: int,
        alphabet: str,
        specials: int,
        newline_id: int,
        unknown_id: int,
        font_file: str = REFERENCE_FONT,
        line_height: float = LINE_HEIGHT,
    ):
        super().__init__()
        self.side = side
        self.line_height = line_height
        self.newline_id = newline_id
        self.scale = max(1, min(4, self.SUPERSAMPLE_SIDE // side))
        # Saved with the weights, so a bundle draws the glyphs it was trained with whatever font
        # version is installed. Made on the default device (bundles load on the meta device).
        device = torch.empty(0).device
        ink, advance = glyph_atlas(alphabet, specials, unknown_id, font_file)
        self.register_buffer("atlas", ink.to(device, copy=True))
        self.register_buffer("advance", advance.to(device, copy=True))

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
        width = torch.where(cell, self.advance.float()[tokens], 0.0)  # in line heights
        line = torch.cumsum(newline.long(), 1)  # the line each token is on
        lines = torch.where(cell, line + 1, 0).amax(1)  # up to the last line with a character
        # Where each token starts on its line: the running sum of advances since the line began.
        before = torch.cumsum(width, 1) - width
        line_start = torch.full((batch, length + 1), float("inf"), device=device)
        line_start.scatter_reduce_(1, line, before, "amin")
        start = before - line_start.gather(1, line)
        line_width = torch.zeros(batch, length + 1, device=device).scatter_add_(1, line, width)

        # The line height: every line fits across, all lines fit down, and none is drawn too big.
        fill = MARGIN * self.side
        height = torch.minimum(fill / lines.clamp(min=1), fill / line_width.amax(1).clamp(min=1e-6))
        height = height.clamp(max=self.line_height * self.side)[:, None]
        top = (self.side - lines[:, None] * height) / 2

        n = self.side * self.scale
        centres = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / self.scale
        row = torch.floor((centres[None] - top) / height)  # [B, n]: the line each pixel row is on
        row_ok = (row >= 0) & (row < lines[:, None])
        row_idx = row.clamp(0, length).long()
        row_width = line_width.gather(1, row_idx)  # [B, n], in line heights
        left = (self.side - row_width * height) / 2
        across = (centres[None, None, :] - left[:, :, None]) / height[:, :, None]  # [B, n rows, n cols]
        ok = row_ok[:, :, None] & (across >= 0) & (across < row_width[:, :, None])
        # The token under each pixel: the last one on its line starting at or before it. Keys rise
        # along the sequence (line, then start), so one sorted search finds it.
        span = line_width.amax(1, keepdim=True) + 1
        keys = line * span + start
        wanted = (row_idx[:, :, None] * span[:, :, None] + across.clamp(min=0)).view(batch, -1)
        index = (torch.searchsorted(keys.contiguous(), wanted.contiguous(), right=True) - 1).clamp(0)
        token = tokens.gather(1, index).view(batch, n, n)
        ok &= cell.gather(1, index).view(batch, n, n)
        u = (across - start.gather(1, index).view(batch, n, n)) / width.gather(1, index).view(
            batch, n, n
        ).clamp(min=1e-6)
        v = (centres[None, :] - top - row * height) / height  # [B, n]
        u = (u * ATLAS_WIDTH).long().clamp(0, ATLAS_WIDTH - 1)
        v = (v * ATLAS_HEIGHT).long().clamp(0, ATLAS_HEIGHT - 1)[:, :, None].expand(batch, n, n)
        return (self.atlas[token, v, u] * ok)[:, None].float()


def text_box(boxes: torch.Tensor) -> torch.Tensor:
    """The union [B, 4] of per-token ink boxes [B, L, 4] (zeros: no box); zeros where none has one."""
    has = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    big = torch.finfo(boxes.dtype).max
    lo = torch.where(has[..., None], boxes[..., :2], big).amin(1)
    hi = torch.where(has[..., None], boxes[..., 2:], -big).amax(1)
    return torch.where(has.any(1, keepdim=True), torch.cat([lo, hi], 1), 0.0)
