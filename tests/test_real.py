"""Stage-2 shards from a folder or a manifest: transcripts from sidecars, manifests or OCR, and every
bad input counted and skipped (never read when it lies outside the named folder)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import font_roboto
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from glyphgen.config import ConfigError, load_config
from glyphgen.data import real
from glyphgen.data.real import RealConfig, build_real_shards, normalise_transcript, read_samples
from glyphgen.data.shards import read_manifest

pytestmark = pytest.mark.filterwarnings("ignore:skipped")
BOLD = str(Path(font_roboto.__file__).parent / "files" / "Roboto-Bold.ttf")


def words_image(text: str, size: tuple[int, int] = (320, 220)) -> Image.Image:
    img = Image.new("RGB", size, (238, 236, 228))
    ImageDraw.Draw(img).text(
        (24, size[1] // 2 - 30), text, font=ImageFont.truetype(BOLD, 52), fill=(20, 20, 20)
    )
    return img


def photo_like(seed: int, size=(300, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(60, 200, (size[1], size[0], 3), dtype=np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    """Good images with sidecars, images to OCR, and one of each kind of broken input."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    photo_like(0).save(d / "a_side.png")
    (d / "a_side.txt").write_bytes(b"hello there\r\nsecond line  \r\n\r\n")
    photo_like(1).save(d / "sub" / "b_side.jpg")
    (d / "sub" / "b_side.txt").write_text("in a sub folder\n")
    Image.fromarray(np.full((50, 80), 30000, np.uint16)).save(d / "c_deep.png")  # 16-bit, converted
    (d / "c_deep.txt").write_text("deep")
    words_image("coffee").save(d / "d_ocr.png")
    words_image("stop here now", size=(640, 200)).save(d / "e_wide.jpg")  # text wider than the crop
    Image.new("RGB", (120, 90), "white").save(d / "f_blank.png")  # OCR finds nothing
    data = encoded(photo_like(2), "PNG")
    (d / "g_trunc.png").write_bytes(data[: len(data) // 2])
    data = encoded(photo_like(3), "JPEG")
    (d / "h_trunc.jpg").write_bytes(data[: len(data) // 2])
    (d / "i_zero.jpg").write_bytes(b"")
    (d / "j_text.png").write_text("not an image\n")
    Image.new("RGB", (1200, 1000), "gray").save(d / "k_huge.png")
    (d / "notes.txt").write_text("a stray text file is not an image")
    return d


def shard_transcripts(out: Path) -> dict[str, tuple[str, dict, tuple[int, int]]]:
    return {
        meta["source"]: (text, meta, Image.open(io.BytesIO(png)).size)
        for png, text, meta in read_samples(out)
    }


def test_folder_build(folder, tmp_path):
    cfg = RealConfig(
        images=str(folder), out=str(tmp_path / "out"), shard_size=2, workers=2, max_pixels=1_000_000
    )
    report = build_real_shards(cfg)
    assert report.count == 5 and report.shards == 3
    assert dict(report.skipped) == {
        "truncated image": 2,
        "empty file": 1,
        "not an image": 1,
        "too large": 1,
        "empty transcript": 1,
    }
    got = shard_transcripts(tmp_path / "out")
    assert {k: v[0] for k, v in got.items()} == {
        "a_side.png": "hello there\nsecond line",
        "sub/b_side.jpg": "in a sub folder",
        "c_deep.png": "deep",
        "d_ocr.png": "coffee",
        "e_wide.jpg": "stop here now",
    }
    assert {v[2] for v in got.values()} == {(64, 64)}
    assert got["a_side.png"][1]["transcript"] == "sidecar"
    assert got["d_ocr.png"][1]["transcript"] == "ocr" and got["d_ocr.png"][1]["ocr_confidence"] > 0.9
    assert got["e_wide.jpg"][1]["padded"]  # all of the text kept, not cut by a square crop
    manifest = read_manifest(tmp_path / "out")
    assert manifest["kind"] == "real" and manifest["resolution"] == 64 and manifest["count"] == 5


def test_manifest_build_skips_escapes_and_bad_lines(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    photo_like(0).save(data / "img" / "given.png")
    words_image("coffee").save(data / "img" / "read.png")
    words_image("secret").save(tmp_path / "outside.png")  # exists, but outside the manifest's folder
    lines = [
        json.dumps({"image": "img/given.png", "text": "from the\r\nmanifest "}),
        json.dumps({"image": "img/read.png"}),
        json.dumps({"image": "../outside.png", "text": "x"}),
        json.dumps({"image": str(tmp_path / "outside.png")}),
        "{not json",
        json.dumps({"text": "no image key"}),
        "",
        json.dumps({"image": "img/missing.png", "text": "x"}),
    ]
    (data / "list.jsonl").write_text("\n".join(lines) + "\n")
    opened = []
    load = real.load_image
    monkeypatch.setattr(real, "load_image", lambda path, *a: opened.append(path) or load(path, *a))

    with pytest.warns(UserWarning, match=r"list\.jsonl:5"):
        report = build_real_shards(
            RealConfig(manifest=str(data / "list.jsonl"), out=str(tmp_path / "out"), workers=1)
        )
    assert report.count == 2
    assert dict(report.skipped) == {"path outside folder": 2, "bad manifest line": 2, "missing file": 1}
    assert not any("outside" in str(p) for p in opened)  # never read
    got = shard_transcripts(tmp_path / "out")
    assert (
        got["img/given.png"][0] == "from the\nmanifest"
        and got["img/given.png"][1]["transcript"] == "manifest"
    )
    assert got["img/read.png"][0] == "coffee" and got["img/read.png"][1]["transcript"] == "ocr"


def test_preview_grid_written(folder, tmp_path):
    for p in folder.glob("[!ad]_*"):  # keep two samples: one sidecar, one OCR'd
        p.unlink()
    build_real_shards(
        RealConfig(images=str(folder), out=str(tmp_path / "out"), workers=1), preview=tmp_path / "p.png"
    )
    assert Image.open(tmp_path / "p.png").size[0] > 128


def test_config_needs_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError, match=r"^images: needs a folder of images"):
        load_config(RealConfig)
    (tmp_path / "m.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"^manifest: give images or manifest, not both"):
        load_config(RealConfig, values={"images": str(tmp_path), "manifest": str(tmp_path / "m.jsonl")})
    with pytest.raises(ConfigError, match=r"^images: folder .* does not exist"):
        load_config(RealConfig, values={"images": str(tmp_path / "nope")})
    cfg = load_config(RealConfig, values={"images": str(tmp_path)}, overrides=["ocr.min_confidence=0.7"])
    assert cfg.ocr.min_confidence == 0.7


def test_normalise_transcript():
    assert normalise_transcript("a  \r\nb\rc\t\n\n") == "a\nb\nc"
    assert normalise_transcript("  indented\nkept") == "  indented\nkept"
