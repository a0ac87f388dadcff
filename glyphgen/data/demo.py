"""The embedded demo set for stage 2: real photographs with text, no user data needed
(docs/architecture.md, "Real-image shards (stage 2)").

This is a demo, not a data set to train a good model on: it lets `finetune-real` run end to end on a
fresh machine. Point the stage at real data with `glyphgen make-shards real --images DIR`.

The photographs ship inside scikit-image's wheel. Each sample takes one, randomly cropped, flipped and
colour-jittered, and puts text on it in one of four realistic styles: a caption bar above or below
the photo, a sign plate on it, a subtitle (light text with a dark outline) at its bottom, or a tweet
card (name line, 1-3 body lines, the photo below). Text comes from a built-in bank of phrases made of
common English words and numbers, drawn with a font that has all its glyphs. Samples are composed at
a few times the stage resolution, then go through exactly what real images go through: OCR on the
full-size image (the OCR reading is the stored transcript; what was drawn is kept in the metadata as
`drawn_text`), then fitting to the stage resolution around the text.
"""

from __future__ import annotations

import dataclasses
import random
import string
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from glyphgen.config import require
from glyphgen.data.demo_text import cased, phrase_bank, short_words
from glyphgen.data.fonts import FontConfig, FontInfo, discover_fonts, fonts_covering, load_font, wrap_line
from glyphgen.data.images import load_image, to_png_bytes
from glyphgen.data.real import ocr_and_fit, read_samples, save_preview, with_ocr_threads
from glyphgen.data.shards import BuildReport, Sample, ShardBuildConfig, ShardBuilder, Skipped
from glyphgen.ocr import Ocr, OcrConfig

STYLES = ("caption", "sign", "subtitle", "tweet")
# Photographs in skimage/data (pictures with text in them, synthetic test patterns and tiny images left out).
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
    "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)  # fmt: skip
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " "
_ATTEMPTS = 8  # phrases tried per sample before it is skipped as unplaceable
_SPACING = 1.22  # baseline-to-baseline distance as a multiple of the font size
# Subtitle outline width as a fraction of the font size: thicker outlines fill the gaps between words
# and the recogniser then drops the spaces (measured: 1/10 gives 78% of subtitles read exactly, 1/16 90%).
_OUTLINE = 1 / 16


@dataclass
class StyleWeights:
    caption: float = 1.0
    """A bar above or below the photo holding 1-2 lines of text."""
    sign: float = 1.0
    """A coloured plate on the photo holding 1-3 lines, often in capitals."""
    subtitle: float = 1.0
    """Light text with a dark outline over the bottom of the photo."""
    tweet: float = 1.0
    """A white or dark card: a name line, 1-3 lines of body text, the photo below."""

    def __post_init__(self):
        for name in STYLES:
            require(getattr(self, name) >= 0, name, f"weight must be >= 0, got {getattr(self, name)}")
        require(sum(dataclasses.astuple(self)) > 0, "caption", "all style weights are zero")


def _demo_fonts() -> FontConfig:
    # Hairline weights and the condensed hand font are illegible once shrunk to 64 px.
    return FontConfig(exclude=["Thin", "Hairline", "Light", "AmaticSC"])


@dataclass
class DemoRealConfig(ShardBuildConfig):
    out: str = "data_shards/demo-real-64"
    """Folder the shards and manifest.json are written to."""
    count: int = 2000
    """Number of sample indices composed (a few are skipped when the OCR reads nothing)."""
    seed: int = 0
    """Base seed: sample i is a function of (seed, i) alone."""
    compose_size: int = 0
    """Side at which samples are composed and OCR'd; 0 means max(256, 3 x resolution)."""
    text_size: tuple[float, float] = (0.12, 0.2)
    """Range of the font size as a fraction of the composed side; the low end keeps text legible
    after shrinking to the stage resolution (0.12 x 256 px = 7.7 px at 64)."""
    styles: StyleWeights = field(default_factory=StyleWeights)
    """Relative frequency of each style."""
    fonts: FontConfig = field(default_factory=_demo_fonts)
    """Where fonts come from (hairline weights excluded by default)."""
    ocr: OcrConfig = field(default_factory=OcrConfig)
    """How the composed images are transcribed (as real images are)."""
    skip_empty: bool = True
    """Skip (and count) samples whose OCR transcript is empty."""

    def __post_init__(self):
        super().__post_init__()
        require(self.count >= 1, "count", f"must be >= 1, got {self.count}")
        require(self.compose_size == 0 or self.compose_size >= 64, "compose_size", "must be 0 or >= 64")
        lo, hi = self.text_size
        require(0 < lo <= hi <= 0.5, "text_size", f"need 0 < min <= max <= 0.5, got {tuple(self.text_size)}")

    @property
    def side(self) -> int:
        return self.compose_size or max(256, 3 * self.resolution)


# -- layout ------------------------------------------------------------------------------------------


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str] | None:
    """Greedy word wrap; None when a single word is wider than `width`."""
    words = text.split()
    if any(font.getlength(word) > width for word in words):
        return None
    return wrap_line(" ".join(words), font.getlength, width)


def _block_height(n: int, font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return round(font.size * _SPACING) * (n - 1) + ascent + descent


@dataclass(frozen=True)
class TextBlock:
    """Wrapped lines of one font at one size."""

    font: ImageFont.FreeTypeFont
    lines: list[str]

    @property
    def height(self) -> int:
        return _block_height(len(self.lines), self.font)

    @property
    def width(self) -> float:
        return max(self.font.getlength(line) for line in self.lines)

    def draw(
        self, draw: ImageDraw.ImageDraw, x: float, top: float, width: float, align: str, **style
    ) -> None:
        pitch = round(self.font.size * _SPACING)
        for i, line in enumerate(self.lines):
            slack = width - self.font.getlength(line)
            lx = x + {"left": 0, "center": slack / 2, "right": slack}[align]
            draw.text((lx, top + i * pitch), line, font=self.font, anchor="la", **style)


def fit_block(text: str, path: str, width: float, height: float, sizes: tuple[int, int], max_lines: int):
    """The largest size in `sizes` (from the top, in ~6% steps) at which `text` wraps into at most
    `max_lines` lines inside width x height; None when even the smallest does not fit."""
    lo, hi = sizes
    size = hi
    while size >= lo:
        font = load_font(path, size)
        lines = _wrap(text, font, width)
        if lines and len(lines) <= max_lines and _block_height(len(lines), font) <= height:
            return TextBlock(font, lines)
        size = min(size - 1, int(size * 0.94))
    return None


# -- photos ------------------------------------------------------------------------------------------


@cache
def photos() -> tuple[Image.Image, ...]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return tuple(load_image(folder / name) for name in PHOTOS)


def photo(rng: random.Random, width: int, height: int) -> Image.Image:
    """A random crop (55-100% of the largest with this aspect), maybe mirrored, colour-jittered."""
    src = rng.choice(photos())
    aspect = width / height
    cw = min(src.width, src.height * aspect) * rng.uniform(0.55, 1.0)
    ch = cw / aspect
    x0, y0 = rng.uniform(0, src.width - cw), rng.uniform(0, src.height - ch)
    img = src.resize(
        (width, height), Image.Resampling.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=3.0
    )
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    jitter = ((ImageEnhance.Brightness, 0.25), (ImageEnhance.Contrast, 0.25), (ImageEnhance.Color, 0.4))
    for enhance, spread in jitter:
        img = enhance(img).enhance(rng.uniform(1 - spread, 1 + spread))
    return img


# -- styles: each returns the composed image and the lines drawn, top to bottom ---------------------


class Composer:
    """Composes demo samples at side `side` from fonts and the phrase bank."""

    def __init__(self, cfg: DemoRealConfig, fonts: list[FontInfo]):
        self.cfg = cfg
        self.side = cfg.side
        self.fonts = fonts
        lo, hi = cfg.text_size
        self.sizes = (round(lo * self.side), round(hi * self.side))

    def text_block(
        self, rng: random.Random, text: str, width: float, height: float, max_lines: int, sizes=None
    ):
        usable = fonts_covering(self.fonts, text)
        if not usable:
            return None
        return fit_block(text, rng.choice(usable).path, width, height, sizes or self.sizes, max_lines)

    def caption(self, rng: random.Random, text: str):
        s, pad = self.side, round(0.04 * self.side)
        block = self.text_block(rng, cased(rng, text, 0.15), s - 2 * pad, 0.4 * s, 2)
        if block is None:
            return None
        bar_h = block.height + 2 * pad
        dark = rng.random() < 0.35
        img = Image.new("RGB", (s, s), (20, 20, 20) if dark else (255, 255, 255))
        on_top = rng.random() < 0.3
        img.paste(photo(rng, s, s - bar_h), (0, 0 if not on_top else bar_h))
        top = pad if on_top else s - bar_h + pad
        fill = (245, 245, 245) if dark else (15, 15, 15)
        block.draw(
            ImageDraw.Draw(img), pad, top, s - 2 * pad, rng.choice(("left", "center", "center")), fill=fill
        )
        return img, block.lines

    def sign(self, rng: random.Random, text: str):
        s = self.side
        block = self.text_block(rng, cased(rng, text, 0.6), 0.8 * s, 0.6 * s, 3)
        if block is None:
            return None
        plate, ink = rng.choice(
            (((0, 110, 60), "white"), ((20, 60, 150), "white"), ((180, 20, 30), "white"),
             ((245, 245, 240), (20, 20, 20)), ((250, 200, 0), (20, 20, 20)), ((25, 25, 25), (255, 220, 0)))
        )  # fmt: skip
        px, py = round(0.05 * s), round(0.04 * s)
        w, h = block.width + 2 * px, block.height + 2 * py
        x0, y0 = rng.uniform(0.02 * s, 0.98 * s - w), rng.uniform(0.02 * s, 0.98 * s - h)
        img = photo(rng, s, s)
        draw = ImageDraw.Draw(img)
        draw.rounded_rectangle((x0, y0, x0 + w, y0 + h), radius=0.02 * s, fill=plate)
        if rng.random() < 0.5:  # inner border, as on road and shop signs
            inset = 0.012 * s
            draw.rounded_rectangle((x0 + inset, y0 + inset, x0 + w - inset, y0 + h - inset),
                                   radius=0.015 * s, outline=ink, width=max(1, round(0.006 * s)))  # fmt: skip
        block.draw(draw, x0 + px, y0 + py, block.width, "center", fill=ink)
        return img, block.lines

    def subtitle(self, rng: random.Random, text: str):
        s = self.side
        block = self.text_block(rng, cased(rng, text, 0.1), 0.9 * s, 0.4 * s, 2)
        if block is None:
            return None
        img = photo(rng, s, s)
        top = s - round(rng.uniform(0.04, 0.1) * s) - block.height
        fill = rng.choice(((255, 255, 255), (255, 255, 255), (255, 230, 60)))
        stroke = max(1, round(block.font.size * _OUTLINE))
        block.draw(ImageDraw.Draw(img), 0.05 * s, top, 0.9 * s, "center",
                   fill=fill, stroke_width=stroke, stroke_fill=(0, 0, 0))  # fmt: skip
        return img, block.lines

    def tweet(self, rng: random.Random, text: str):
        s, pad = self.side, round(0.05 * self.side)
        dark = rng.random() < 0.3
        paper, ink = ((21, 32, 43), (240, 240, 240)) if dark else ((255, 255, 255), (15, 20, 25))
        names = short_words()
        small = (self.sizes[0], round(1.15 * self.sizes[0]))
        avatar = round(1.3 * small[1])
        name = f"{rng.choice(names).title()} {rng.choice(names).title()}"
        head = self.text_block(rng, name, s - 2.5 * pad - avatar, 0.2 * s, 1, small)
        if head is None:  # two names do not fit beside the avatar: one does
            name = name.split()[0]
            head = self.text_block(rng, name, s - 2.5 * pad - avatar, 0.2 * s, 1, small)
        body = self.text_block(rng, cased(rng, text, 0.05), s - 2 * pad, 0.45 * s, 3)
        if head is None or body is None:
            return None
        img = Image.new("RGB", (s, s), paper)
        draw = ImageDraw.Draw(img)
        # A thumbnail-sized profile picture is smooth; a sharp textured crop (coins!) reads as text.
        face = photo(rng, avatar, avatar).filter(ImageFilter.GaussianBlur(avatar / 10))
        img.paste(face, (pad, pad), _mask(avatar, avatar, avatar // 2))
        head.draw(draw, 1.5 * pad + avatar, pad + (avatar - head.height) / 2, head.width, "left", fill=ink)
        top = pad + avatar + pad // 2
        body.draw(draw, pad, top, s - 2 * pad, "left", fill=ink)
        photo_top = round(top + body.height + pad / 2)
        if s - pad - photo_top >= 0.2 * s:  # only when there is room left for a photo worth the name
            pic = photo(rng, s - 2 * pad, s - pad - photo_top)
            img.paste(pic, (pad, photo_top), _mask(*pic.size, round(0.03 * s)))
        return img, [name, *body.lines]

    def compose(self, index: int):
        """(image, drawn lines, style) for sample `index`, or None when nothing fit."""
        rng = random.Random(f"{self.cfg.seed}:{index}")  # per sample: same bytes whatever the workers
        weights = dataclasses.astuple(self.cfg.styles)
        style = rng.choices(STYLES, weights)[0]
        bank = phrase_bank()
        for _ in range(_ATTEMPTS):
            text = " ".join(rng.choice(bank) for _ in range(rng.choice((1, 1, 2))))
            made = getattr(self, style)(rng, text)
            if made is not None:
                return (*made, style)
        return None


@cache
def _mask(width: int, height: int, radius: int) -> Image.Image:
    """A rounded-rectangle paste mask (a circle when radius is half the side)."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width - 1, height - 1), radius=radius, fill=255)
    return mask


# -- the build ---------------------------------------------------------------------------------------


class DemoBuilder(ShardBuilder):
    """Sample `index` for every index below `cfg.count`: composed, then read by the OCR as real
    images are. Each worker holds its own composer and OCR engine (made on first use)."""

    kind = "real"
    chunksize = 4

    def tasks(self) -> range:
        return range(self.cfg.count)

    def prepare(self, workers: int) -> None:
        self.fonts = discover_fonts(self.cfg.fonts, ALPHABET)
        self.cfg = dataclasses.replace(self.cfg, ocr=with_ocr_threads(self.cfg.ocr, workers))
        photos()  # loaded once here, so forked workers share them

    def setup(self) -> None:
        self.composer, self.ocr = Composer(self.cfg, self.fonts), Ocr(self.cfg.ocr)

    def make_sample(self, index: int) -> Sample | Skipped:
        made = self.composer.compose(index)
        if made is None:
            return Skipped("text did not fit", f"sample {index}")
        img, drawn, style = made
        fitted, result, meta = ocr_and_fit(img, self.ocr, self.cfg.resolution)
        text = result.text
        if self.cfg.skip_empty and not text.strip():
            return Skipped("empty transcript", f"sample {index} ({style})")
        meta.update(source="demo", style=style, drawn_text="\n".join(drawn))
        return Sample(f"{index:08d}", to_png_bytes(fitted), text, meta)

    def manifest_extra(self) -> dict:
        source = "demo (scikit-image photographs with composed text)"
        return {"source": source, "seed": self.cfg.seed, "requested_count": self.cfg.count}

    def finish(self, preview: str | Path | None) -> None:
        print(agreement_summary(self.cfg.out), file=sys.stderr)
        if preview is not None:
            save_preview(self.cfg.out, preview)


def agreement_summary(folder: str | Path) -> str:
    """One line: how often the OCR transcript equals the text that was drawn (a diagnostic of the
    OCR and of the demo's legibility, not a training metric)."""
    pairs = [(text, meta.get("drawn_text")) for _, text, meta in read_samples(folder)]
    exact = sum(t == d for t, d in pairs)
    # Most misses are only spaces (the recogniser merges or splits words), so report that too.
    spaces = sum(t.replace(" ", "") == (d or "").replace(" ", "") for t, d in pairs)
    n = max(len(pairs), 1)
    return (
        f"OCR transcripts equal to the drawn text: {exact}/{len(pairs)} ({exact / n:.0%}); "
        f"ignoring spaces: {spaces}/{len(pairs)} ({spaces / n:.0%})"
    )


def build_demo_real_shards(
    cfg: DemoRealConfig, overwrite: bool = False, preview: str | Path | None = None
) -> BuildReport:
    """Compose and transcribe `cfg.count` demo samples into shards at `cfg.out`; with `preview`, also
    write a grid PNG of the first samples and their transcripts there."""
    return DemoBuilder(cfg).build(overwrite, preview)
