"""Shared fixtures: tiny shard folders written with the real ShardOutput."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from glyphgen.data.shards import Sample, ShardOutput


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def text_image(text: str, size: int = 32, mode: str = "L") -> Image.Image:
    img = Image.new(mode, (size, size), 255 if mode == "L" else (255, 255, 255))
    ImageDraw.Draw(img).text((2, 2), text, fill=0 if mode == "L" else (0, 0, 0))
    return img


def write_shards(
    folder, n: int, maxcount: int, size: int = 32, mode: str = "L", prefix: str = "t"
) -> list[str]:
    """`n` samples in shards of `maxcount`; sample j has key `k{j:05d}` and transcript `{prefix}{j}`."""
    texts = [f"{prefix}{j}" for j in range(n)]
    with ShardOutput(folder, maxcount=maxcount) as out:
        for j, text in enumerate(texts):
            out.write(Sample(f"k{j:05d}", png_bytes(text_image(text, size, mode)), text))
    return texts


@pytest.fixture
def rng():
    return random.Random(0)


def one_line_error(code: int, err: str, *fragments: str) -> None:
    """A CLI exit for a user mistake: code 2 and one `glyphgen: error:` line naming each fragment."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glyphgen: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def trainer_with_callback(callback: str) -> str:
    """Script text for a training subprocess: every trainer `glyphgen.training.train` builds gets
    one more callback, an instance of the class named `callback` (defined earlier in the script)."""
    return f"""
build = train.build_trainer
def build_with_callback(cfg, run_dir, module):
    trainer = build(cfg, run_dir, module)
    trainer.callbacks.append({callback}())
    return trainer
train.build_trainer = build_with_callback
"""
