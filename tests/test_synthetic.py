"""Synthetic stage-1 data: images, transcripts, layout inside the image, determinism, preview."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from glyphgen.config import ConfigError, load_config
from glyphgen.data.fonts import discover_fonts, wrap_line
from glyphgen.data.shards import Sample, Skipped
from glyphgen.data.synthetic import (
    RenderConfig,
    SyntheticConfig,
    SyntheticRenderer,
    build_synthetic_shards,
    contrasting,
    encode_png,
)
from glyphgen.text.tokenizer import DEFAULT_ALPHABET


def renderer(**kw) -> SyntheticRenderer:
    cfg = SyntheticConfig(**kw)
    return SyntheticRenderer(cfg, discover_fonts(cfg.fonts, cfg.alphabet))


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_samples_decode_and_all_ink_lies_inside_the_margins(resolution):
    r = renderer(resolution=resolution)
    for i in range(40):
        sample = r.render_sample(i)
        assert isinstance(sample, Sample) and sample.key == f"{i:09d}"
        image = Image.open(io.BytesIO(sample.png))
        assert image.format == "PNG" and image.mode == "L" and image.size == (resolution, resolution)
        pixels = np.asarray(image)
        meta = sample.meta
        assert abs(meta["background"] - meta["foreground"]) >= 96
        assert set(meta) >= {"font", "size", "align", "background", "foreground", "source"}
        ys, xs = np.nonzero(pixels != meta["background"])
        assert len(ys) > 0, f"sample {i} has no ink"
        lo, hi = r.margin, resolution - r.margin
        assert lo <= ys.min() and ys.max() < hi and lo <= xs.min() and xs.max() < hi, sample.text
        assert set(sample.text) <= set(DEFAULT_ALPHABET)
        assert all(line and line == line.strip() for line in sample.text.split("\n"))


def test_background_range_and_zero_jitter_give_centred_text_on_light_paper():
    r = renderer(resolution=64, render=RenderConfig(background=(230, 255), jitter=0.0))
    for i in range(30):
        sample = r.render_sample(i)
        meta, pixels = sample.meta, np.asarray(Image.open(io.BytesIO(sample.png)))
        assert 230 <= meta["background"] <= 255 and meta["foreground"] <= meta["background"] - 96
        ys, xs = np.nonzero(pixels != meta["background"])
        # Centred up to rounding of the free space (and the ink box's own odd pixel).
        assert abs((xs.min() + xs.max() + 1) / 2 - 32) <= 1, sample.text
        assert abs((ys.min() + ys.max() + 1) / 2 - 32) <= 1, sample.text


@pytest.mark.parametrize("resolution", [64, 128])
def test_character_boxes_hold_the_ink_of_their_characters(resolution):
    r = renderer(resolution=resolution)
    inside, total = 0, 0
    for i in range(30):
        sample = r.render_sample(i)
        boxes = sample.meta["char_boxes"]
        assert len(boxes) == len(sample.text)
        for ch, box in zip(sample.text, boxes, strict=True):
            assert (box is None) == ch.isspace(), (ch, box)
        for line_boxes in _split_lines(sample.text, boxes):
            lefts = [b[0] for b in line_boxes if b is not None]
            assert lefts == sorted(lefts)  # left to right along the line
        ink = np.asarray(Image.open(io.BytesIO(sample.png))) != sample.meta["background"]
        covered = np.zeros_like(ink)
        for box in filter(None, boxes):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= resolution and 0 <= y0 < y1 <= resolution
            covered[y0:y1, x0:x1] = True
        inside, total = inside + (ink & covered).sum(), total + ink.sum()
    # Antialiased edges may spill a pixel past a glyph's box; the ink itself lies in the boxes.
    assert inside / total > 0.99


def _split_lines(text: str, boxes: list) -> list[list]:
    lines, current = [], []
    for ch, box in zip(text, boxes, strict=True):
        if ch == "\n":
            lines.append(current)
            current = []
        else:
            current.append(box)
    return [*lines, current]


def test_transcripts_use_the_alphabet_and_multi_line_samples_occur():
    r = renderer(resolution=64)
    samples = [r.render_sample(i) for i in range(400)]
    assert all(isinstance(s, Sample) for s in samples)
    assert all(set(s.text) <= set(DEFAULT_ALPHABET) for s in samples)
    multi = [s for s in samples if "\n" in s.text]
    assert len(multi) > 40
    assert any(s.meta["source"] != "posts" for s in multi)  # wrapping makes lines too
    assert {s.meta["align"] for s in samples} == {"left", "center", "right"}
    assert len({s.meta["font"] for s in samples}) > 20


def test_same_index_same_bytes_and_indices_differ():
    a, b = renderer(seed=5), renderer(seed=5)
    assert a.render_sample(7) == b.render_sample(7)
    assert a.render_sample(7).png != a.render_sample(8).png
    assert a.render_sample(7).png != renderer(seed=6).render_sample(7).png


def test_png_writer_round_trips_through_pillow():
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="L")
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), pixels)


def test_wrap_line_breaks_at_word_boundaries():
    assert wrap_line("aa bb cc", len, 5) == ["aa bb", "cc"]
    assert wrap_line("aaaaaaa bb", len, 5) == ["aaaaaaa", "bb"]  # an over-long word keeps its own row
    assert wrap_line("single", len, 100) == ["single"]


def test_contrasting_lightness_keeps_its_distance():
    rng = random.Random(0)
    for background in (0, 60, 127, 128, 200, 255):
        for _ in range(200):
            fg = contrasting(rng, background, 96)
            assert 0 <= fg <= 255 and abs(fg - background) >= 96


def _tar_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_same_seed_gives_byte_identical_shards_with_1_and_2_workers(tmp_path):
    outs = {}
    for name, workers in (("one", 1), ("one-again", 1), ("two", 2)):
        cfg = SyntheticConfig(out=str(tmp_path / name), count=150, shard_size=60, seed=3, workers=workers)
        report = build_synthetic_shards(cfg)
        assert report.count + sum(report.skipped.values()) == 150
        outs[name] = _tar_bytes(tmp_path / name)
    assert list(outs["one"]) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert outs["one"] == outs["one-again"] == outs["two"]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["kind"] == "synthetic" and manifest["resolution"] == 64 and manifest["seed"] == 3
    assert manifest["requested_count"] == 150
    with tarfile.open(tmp_path / "one" / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert sorted(names[:3]) == ["000000000.json", "000000000.png", "000000000.txt"]


def test_preview_grid_is_written(tmp_path):
    cfg = SyntheticConfig(out=str(tmp_path / "shards"), count=40, shard_size=100, workers=1)
    build_synthetic_shards(cfg, preview=tmp_path / "preview" / "grid.png")
    grid = Image.open(tmp_path / "preview" / "grid.png")
    assert grid.format == "PNG" and grid.width >= 8 * 128 and grid.height >= 4 * 128


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("resolution=48", "resolution"),
        ("text.sources.words=-1", "text.sources.words"),
        ("render.alignment.left=-2", "render.alignment.left"),
        ("render.text_height=[0.5,0.1]", "render.text_height"),
        ("render.min_contrast=200", "render.min_contrast"),
        ("render.background=[200,100]", "render.background"),
        ("render.jitter=1.5", "render.jitter"),
        ("fonts.font_dirs=[/no/such/fonts]", "fonts.font_dirs.0"),
        ("count=0", "count"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        load_config(SyntheticConfig, overrides=[override])


def test_text_that_cannot_be_drawn_legibly_is_skipped():
    # A 40 px capital letter cannot fit into a 32 px image.
    r = renderer(resolution=32, render=RenderConfig(min_glyph_px=40))
    skipped = r.render_sample(0)
    assert isinstance(skipped, Skipped) and skipped.reason == "text does not fit"
