"""Stage-1 data: grayscale images of random text drawn with real fonts, as shards
(docs/architecture.md, "Synthetic shards (stage 1)").

Every sample depends only on (seed, index): its own `random.Random` draws the text, the font (one
that has every glyph of the text), the size, the line spacing, the alignment, the position and the
lightness of text and background. So the same seed gives the same bytes whatever the worker count.
The text is laid out by measuring it once at a candidate size and scaling, wrapped at word
boundaries or shrunk until all ink lies inside the margins; texts that only fit below the
legibility floor (`min_glyph_px`) are redrawn, and after a few failures the index is skipped.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from glyphgen.config import require
from glyphgen.data import shards
from glyphgen.data.fonts import FontConfig, FontInfo, discover_fonts, fonts_covering, load_font, wrap_line
from glyphgen.data.preview import save_grid
from glyphgen.data.shards import BuildReport, Sample, ShardBuildConfig, ShardBuilder, Skipped
from glyphgen.data.text_sources import TextConfig, TextSampler
from glyphgen.text.alphabet import DEFAULT_ALPHABET

ALIGNMENTS = ("left", "center", "right")
PREVIEW_COUNT = 32
_ATTEMPTS = 10  # texts drawn per index before it is skipped
# Font sizes are quantised to ~6% steps so a handful of FreeType objects per font serve every sample.
_SIZE_LADDER = tuple(sorted({round(6 * 1.06**k) for k in range(90)}))
# Rough glyph proportions (of the font size) used only to cap text length to what can fit.
_CAP_HEIGHT, _CHAR_WIDTH = 0.7, 0.55
_REF = 100  # font size at which per-character metrics are measured, then scaled


@dataclass
class AlignmentWeights:
    left: float = 1.0
    """Lines start at the same x (ragged right)."""
    center: float = 1.0
    """Lines centred on each other."""
    right: float = 1.0
    """Lines end at the same x (ragged left)."""

    def __post_init__(self):
        for name in ALIGNMENTS:
            require(getattr(self, name) >= 0, name, f"weight must be >= 0, got {getattr(self, name)}")


@dataclass
class RenderConfig:
    text_height: tuple[float, float] = (0.12, 0.6)
    """Range of the font size (em, in pixels) as a fraction of the image side, drawn uniformly;
    texts too big for the image are then wrapped or shrunk to fit."""
    min_glyph_px: float = 7.0
    """Legibility floor: height of a capital letter in pixels. Texts that fit only below it are redrawn."""
    line_spacing: tuple[float, float] = (1.0, 1.4)
    """Range of the baseline-to-baseline distance, as a multiple of the font size."""
    min_contrast: int = 96
    """Smallest |text lightness - background lightness| on the 0-255 scale (background is uniform)."""
    background: tuple[int, int] = (0, 255)
    """Range of the background lightness (0-255), drawn uniformly; (255, 255): white paper. The text's
    lightness is then drawn uniformly among those at least `min_contrast` away."""
    jitter: float = 1.0
    """How far from the centre the text may be placed, as a fraction of the free space around it
    inside the margins: 1 anywhere, 0 always centred."""
    alignment: AlignmentWeights = field(default_factory=AlignmentWeights)
    """Relative weight of each alignment of the lines of a multi-line text."""
    margin: float = 0.04
    """Border kept free of ink on every side, as a fraction of the image side."""
    wrap: float = 0.7
    """Probability that a text too wide for the image is wrapped at word boundaries (else shrunk)."""

    def __post_init__(self):
        lo, hi = self.text_height
        require(0 < lo <= hi <= 1, "text_height", f"need 0 < min <= max <= 1, got {tuple(self.text_height)}")
        lo, hi = self.line_spacing
        require(
            0.8 <= lo <= hi <= 3,
            "line_spacing",
            f"need 0.8 <= min <= max <= 3, got {tuple(self.line_spacing)}",
        )
        require(self.min_glyph_px > 0, "min_glyph_px", f"must be > 0, got {self.min_glyph_px}")
        require(
            0 <= self.min_contrast <= 128, "min_contrast", f"must be in [0, 128], got {self.min_contrast}"
        )
        lo, hi = self.background
        require(
            0 <= lo <= hi <= 255, "background", f"need 0 <= min <= max <= 255, got {tuple(self.background)}"
        )
        require(0 <= self.jitter <= 1, "jitter", f"must be in [0, 1], got {self.jitter}")
        require(0 <= self.margin < 0.25, "margin", f"must be in [0, 0.25), got {self.margin}")
        require(0 <= self.wrap <= 1, "wrap", f"is a probability, got {self.wrap}")
        weights = dataclasses.astuple(self.alignment)
        require(sum(weights) > 0, "alignment", "all alignment weights are zero")


@dataclass
class SyntheticConfig(ShardBuildConfig):
    out: str = "data_shards/synthetic-64"
    """Folder the shards and manifest.json are written to."""
    count: int = 100_000
    """Number of sample indices to render (a few may be skipped when their text cannot fit)."""
    seed: int = 0
    """Base seed: sample i is a function of (seed, i) alone."""
    fonts: FontConfig = field(default_factory=FontConfig)
    """Where fonts come from."""
    text: TextConfig = field(default_factory=TextConfig)
    """What text is drawn."""
    render: RenderConfig = field(default_factory=RenderConfig)
    """How it is drawn."""
    alphabet: str = DEFAULT_ALPHABET
    """Characters transcripts may use (must match the tokenizer's alphabet)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.count >= 1, "count", f"must be >= 1, got {self.count}")


class _Metrics:
    """Advance and ink extent of each character of one font, measured once at size `_REF` and
    scaled: laying out a text is then arithmetic, not a FreeType call per candidate size."""

    def __init__(self, font: FontInfo):
        self.font = load_font(font.path, _REF)
        self.chars: dict[str, tuple[float, int, int]] = {}
        tops = [self.font.getbbox(ch, anchor="ls")[1] for ch in "HEIXT0" if ch in font.coverage]
        self.cap = -min(tops) / _REF if tops and min(tops) < 0 else _CAP_HEIGHT  # capital height, in ems

    def _char(self, ch: str) -> tuple[float, int, int]:
        if ch not in self.chars:
            _, top, _, bottom = self.font.getbbox(ch, anchor="ls")
            self.chars[ch] = (self.font.getlength(ch), top, bottom)
        return self.chars[ch]

    def width(self, text: str) -> float:
        """Advance width of `text` in ems (kerning ignored; the final exact check catches it)."""
        return sum(self._char(c)[0] for c in text) / _REF

    def box(self, text: str) -> tuple[float, float, float]:
        """(width, top, bottom) of `text` in ems; top and bottom of the ink relative to the
        baseline (top is negative)."""
        width, top, bottom = 0.0, 0, 0
        for c in text:
            advance, t, b = self._char(c)
            width, top, bottom = width + advance, min(top, t), max(bottom, b)
        return width / _REF, top / _REF, bottom / _REF


@cache
def _metrics(font: FontInfo) -> _Metrics:
    return _Metrics(font)


def _ladder_below(size: float) -> int:
    """The largest quantised font size <= `size` (the smallest one if none is)."""
    return max((s for s in _SIZE_LADDER if s <= size), default=_SIZE_LADDER[0])


def encode_png(image: Image.Image) -> bytes:
    """8-bit grayscale PNG of an "L" image: filter 0 rows, zlib level 1. Written here rather than
    with `Image.save` because Pillow's PNG path costs ~200 us of fixed overhead per image, more
    than drawing a 64 px sample; Pillow decodes the result bit-exactly (see the tests)."""
    width, height = image.size
    rows = np.zeros((height, width + 1), np.uint8)  # column 0: each row's filter type, 0 = none
    rows[:, 1:] = np.asarray(image)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


def contrasting(rng: random.Random, background: int, min_contrast: int) -> int:
    """A lightness in 0-255 at least `min_contrast` away from `background`, uniform over those allowed."""
    n_dark = max(0, background - min_contrast + 1)
    n_light = max(0, 256 - background - min_contrast)
    r = rng.randrange(n_dark + n_light)
    return r if r < n_dark else background + min_contrast + r - n_dark


@dataclass(frozen=True)
class Layout:
    lines: list[str]
    font: ImageFont.FreeTypeFont
    size: int
    boxes: list[tuple[int, int, int, int]]  # ink box of each line, relative to its left baseline
    pitch: int  # baseline-to-baseline distance in pixels
    width: int  # ink box of the whole block
    height: int
    top: int  # top of the block's ink relative to the first baseline


def character_boxes(
    line: str, font: ImageFont.FreeTypeFont, origin: tuple[int, int], side: int
) -> list[list[int] | None]:
    """The ink box [x0, y0, x1, y1] (pixels, clipped to the image) of each character of `line` drawn
    at `origin` (left end of its baseline); None for a character without ink (a space). The renderer
    knows where every character is: stored with the sample, it can teach attention where to look."""
    boxes: list[list[int] | None] = []
    for k, ch in enumerate(line):
        x0, y0, x1, y1 = font.getbbox(ch, anchor="ls")
        if ch.isspace() or x1 <= x0 or y1 <= y0:
            boxes.append(None)
            continue
        x = origin[0] + round(font.getlength(line[:k]))  # the pen position, kerning included
        box = [x + x0, origin[1] + y0, x + x1, origin[1] + y1]
        boxes.append([min(max(v, 0), side) for v in box])
    return boxes


def _measure(lines: list[str], font: ImageFont.FreeTypeFont, size: int, pitch: int) -> Layout:
    boxes = [tuple(int(v) for v in font.getbbox(line, anchor="ls")) for line in lines]
    width = max(x1 - x0 for x0, _, x1, _ in boxes)
    top = min(y0 + i * pitch for i, (_, y0, _, _) in enumerate(boxes))
    bottom = max(y1 + i * pitch for i, (_, _, _, y1) in enumerate(boxes))
    return Layout(lines, font, size, boxes, pitch, width, bottom - top, top)


class SyntheticRenderer:
    """Renders sample `index` of a synthetic data set; holds the per-process font and text state."""

    def __init__(self, cfg: SyntheticConfig, fonts: list[FontInfo]):
        self.cfg = cfg
        self.style = cfg.render
        self.res = cfg.resolution
        self.margin = round(cfg.render.margin * self.res)
        self.avail = self.res - 2 * self.margin
        self.fonts = fonts
        # Characters every font has: most texts need no per-font coverage check at all.
        self._common = frozenset.intersection(*(f.coverage for f in fonts))
        self.text = TextSampler(self._fitting_text_config(), cfg.alphabet)
        self._align_weights = dataclasses.astuple(cfg.render.alignment)

    def _fitting_text_config(self) -> TextConfig:
        """Cap line length and line count to what can fit at the legibility floor, so that few
        drawn texts are thrown away (at 64 px about 10 characters by 5 lines)."""
        min_em = self.style.min_glyph_px / _CAP_HEIGHT
        chars = max(1, int(self.avail / (_CHAR_WIDTH * min_em)))
        lines = max(1, 1 + int((self.avail - min_em) / (min_em * self.style.line_spacing[0])))
        text = self.cfg.text
        return dataclasses.replace(
            text, max_chars=min(text.max_chars, chars), max_lines=min(text.max_lines, lines)
        )

    def _largest_size(self, rows: list[str], metrics: _Metrics, spacing: float) -> float:
        """Largest font size (estimated from the per-character metrics) at which `rows` fit."""
        boxes = [metrics.box(row) for row in rows]
        width = max(w for w, _, _ in boxes)
        top = min(t + i * spacing for i, (_, t, _) in enumerate(boxes))
        bottom = max(b + i * spacing for i, (_, _, b) in enumerate(boxes))
        return min(self.avail / max(width, 1e-6), self.avail / max(bottom - top, 1e-6))

    def _layout(self, rng: random.Random, text: str, font: FontInfo) -> Layout | None:
        """Rows, size and exact ink boxes so the whole text fits inside the margins, or None if it
        only fits below the legibility floor."""
        lines = text.split("\n")
        metrics = _metrics(font)
        min_size = math.ceil(self.style.min_glyph_px / metrics.cap)
        size = max(_ladder_below(rng.uniform(*self.style.text_height) * self.res), min_size)
        spacing = rng.uniform(*self.style.line_spacing)
        wrap = rng.random() < self.style.wrap
        while True:
            rows = (
                [r for line in lines for r in wrap_line(line, metrics.width, self.avail / size)]
                if wrap
                else lines
            )
            fit = self._largest_size(rows, metrics, spacing)
            if size <= fit:
                layout = _measure(rows, load_font(font.path, size), size, round(size * spacing))
                if layout.width <= self.avail and layout.height <= self.avail:
                    return layout
                fit = size - 1  # the estimate was a little optimistic (hinting, overhangs)
            elif wrap:
                fit = math.sqrt(size * fit)  # a smaller size also re-wraps into fewer rows: go halfway
            smaller = max(_ladder_below(min(fit, size - 1)), min_size)
            if smaller >= size:
                return None
            size = smaller

    def _span(self, free: int) -> tuple[int, int]:
        """First and last position of a text with `free` pixels to spare inside the margins: the
        middle `jitter` of that room."""
        keep = math.floor(free * (1 - self.style.jitter) / 2)  # 2 * keep <= free: never an empty range
        return self.margin + keep, self.margin + free - keep

    def render_sample(self, index: int) -> Sample | Skipped:
        rng = random.Random(f"glyphgen-synthetic:{self.cfg.seed}:{index}")
        for _ in range(_ATTEMPTS):
            text, source = self.text.sample_with_source(rng)
            candidates = self.fonts if self._common.issuperset(text) else fonts_covering(self.fonts, text)
            if not candidates:
                continue
            font = rng.choice(candidates)
            layout = self._layout(rng, text, font)
            if layout is not None:
                return self._draw(rng, index, layout, font, source)
        return Skipped("text does not fit", f"sample {index}: no text fitted in {_ATTEMPTS} attempts")

    def _draw(self, rng: random.Random, index: int, layout: Layout, font: FontInfo, source: str) -> Sample:
        background = rng.randint(*self.style.background)  # the default draws as randrange(256) did
        foreground = contrasting(rng, background, self.style.min_contrast)
        align = rng.choices(ALIGNMENTS, self._align_weights)[0]
        left = rng.randint(*self._span(self.avail - layout.width))
        top = rng.randint(*self._span(self.avail - layout.height))
        image = Image.new("L", (self.res, self.res), background)
        draw = ImageDraw.Draw(image)
        char_boxes: list[list[int] | None] = []
        for i, (line, (x0, _, x1, _)) in enumerate(zip(layout.lines, layout.boxes, strict=True)):
            slack = layout.width - (x1 - x0)
            dx = {"left": 0, "center": slack // 2, "right": slack}[align]
            origin = (left + dx - x0, top - layout.top + i * layout.pitch)
            draw.text(origin, line, fill=foreground, font=layout.font, anchor="ls")
            char_boxes += ([None] if i else []) + character_boxes(line, layout.font, origin, self.res)
        meta = {
            "font": font.name,
            "size": layout.size,
            "align": align,
            "background": background,
            "foreground": foreground,
            "source": source,
            "lines": len(layout.lines),
            "char_boxes": char_boxes,
        }
        return Sample(f"{index:09d}", encode_png(image), "\n".join(layout.lines), meta)


class SyntheticBuilder(ShardBuilder):
    """Sample `index` for every index below `cfg.count`; each worker holds its own renderer."""

    kind = "synthetic"

    def tasks(self) -> range:
        return range(self.cfg.count)

    def worker_count(self, tasks: range) -> int:
        return shards.resolve_workers(self.cfg.workers)  # as many as asked, even for fewer samples

    def prepare(self, workers: int) -> None:
        self.fonts = discover_fonts(self.cfg.fonts, self.cfg.alphabet)  # once, for all

    def setup(self) -> None:
        self.renderer = SyntheticRenderer(self.cfg, self.fonts)

    def make_sample(self, index: int) -> Sample | Skipped:
        return self.renderer.render_sample(index)

    def manifest_extra(self) -> dict:
        return {"seed": self.cfg.seed, "requested_count": self.cfg.count}

    def finish(self, preview: str | Path | None) -> None:
        if preview is None:
            return
        renderer = SyntheticRenderer(self.cfg, self.fonts)
        samples = [renderer.render_sample(i) for i in range(min(PREVIEW_COUNT, self.cfg.count))]
        samples = [s for s in samples if isinstance(s, Sample)]
        images = [Image.open(io.BytesIO(s.png)) for s in samples]
        save_grid(images, [s.text for s in samples], preview, cell=max(128, self.cfg.resolution))


def build_synthetic_shards(
    cfg: SyntheticConfig, overwrite: bool = False, preview: Path | None = None
) -> BuildReport:
    """Render `cfg.count` samples into shards at `cfg.out`; with `preview`, also write a grid PNG of
    the first samples with their transcripts there."""
    return SyntheticBuilder(cfg).build(overwrite, preview)
