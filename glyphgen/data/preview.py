"""Contact sheets of shard samples with their transcripts, for a person to look at."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_CAPTION_LINES = 4
_PAD = 4


def _fit(line: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """`line` cut (with "..") so it fits in `width` pixels."""
    if font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "..") > width:
        line = line[:-1]
    return line + ".."


def _caption_rows(text: str, font, width: int) -> list[str]:
    lines = text.split("\n")
    if len(lines) > _CAPTION_LINES:
        lines = [*lines[: _CAPTION_LINES - 1], f"(+{len(lines) - _CAPTION_LINES + 1} lines)"]
    return [_fit(line, font, width) for line in lines]


def save_grid(
    images: list[Image.Image],
    captions: list[str] | None,
    path: str | Path,
    cell: int = 128,
    columns: int = 8,
) -> Path:
    """Write a PNG grid of `images`, each scaled to `cell` x `cell` pixels, with its caption (the
    transcript: one row per line, long ones cut) printed underneath. Returns the path written."""
    if not images:
        raise ValueError("save_grid: no images to show")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"save_grid: {len(images)} images but {len(captions)} captions")
    font = ImageFont.load_default(size=max(9, cell // 11))
    line_h = math.ceil(font.getbbox("Ag")[3]) + 2
    caption_h = (_CAPTION_LINES * line_h + _PAD) if captions is not None else 0
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new(
        "RGB", (columns * (cell + _PAD) + _PAD, rows * (cell + caption_h + _PAD) + _PAD), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x = _PAD + (i % columns) * (cell + _PAD)
        y = _PAD + (i // columns) * (cell + caption_h + _PAD)
        # Whole-number upscales use nearest so a person sees the real pixels the model sees.
        upscale = cell % image.width == 0 and image.width == image.height and cell >= image.width
        resample = Image.Resampling.NEAREST if upscale else Image.Resampling.LANCZOS
        sheet.paste(image.convert("RGB").resize((cell, cell), resample), (x, y))
        if captions is not None:
            for r, row in enumerate(_caption_rows(captions[i], font, cell)):
                draw.text((x, y + cell + 2 + r * line_h), row, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
