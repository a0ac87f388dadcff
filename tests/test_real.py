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


def _build(tmp_path, **kw) -> tuple:
    """A build (one worker, OCR on the main thread, unless `workers` is given) and its warnings."""
    kw.setdefault("workers", 1)
    with pytest.warns(UserWarning) as caught:
        report = build_real_shards(RealConfig(out=str(tmp_path / "out"), **kw))
    return report, "\n".join(str(w.message) for w in caught)


def test_extreme_aspect_ratios_are_skipped_before_any_ocr(tmp_path, monkeypatch):
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (3000, 20), "white").save(d / "banner.png")  # RapidOCR raised ResizeImgError on it
    Image.new("RGB", (20, 1100), "white").save(d / "pole.png")
    (d / "pole.txt").write_text("given")
    words_image("coffee").save(d / "read.png")
    seen, run = [], real.Ocr._run

    def spy(self, engine, image, recognise):
        seen.append(image.size)
        return run(self, engine, image, recognise)

    monkeypatch.setattr(real.Ocr, "_run", spy)
    report, said = _build(tmp_path, images=str(d))
    assert report.count == 1 and dict(report.skipped) == {"extreme aspect ratio": 2}
    assert "banner.png: 3000x20 is over max_aspect=50:1" in said and "pole.png" in said
    assert seen == [(320, 220)]  # only the ordinary image met the OCR


def test_ocr_engine_errors_are_counted_skips_naming_the_image(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (3000, 20), "white").save(d / "banner.png")
    Image.new("RGB", (1, 8000), "white").save(d / "needle.png")  # upscaled to 3.9 GB before the cap
    words_image("coffee").save(d / "read.png")
    report, said = _build(tmp_path, images=str(d), max_aspect=100_000)
    assert report.count == 1 and dict(report.skipped) == {"OCR failed": 2}
    assert "banner.png: the OCR engine failed on this 3000x20 image (ResizeImgError)" in said
    assert "needle.png: the OCR engine failed on this 1x8000 image" in said


@pytest.mark.parametrize("workers", [1, 2])  # the limit holds on the main thread and in pool workers
def test_ocr_over_its_time_limit_is_a_counted_skip(tmp_path, workers):
    d = tmp_path / "images"
    d.mkdir()
    words_image("coffee").save(d / "read.png")  # read by OCR
    words_image("given").save(d / "side.png")  # the detector locates its text
    (d / "side.txt").write_text("given")
    photo_like(0).save(d / "blank.png")  # an empty transcript: no OCR at all, so one sample is written
    (d / "blank.txt").write_text("")
    report, said = _build(tmp_path, images=str(d), ocr_time_limit=0.001, skip_empty=False, workers=workers)
    assert report.count == 1 and dict(report.skipped) == {"OCR time limit": 2}
    assert "read.png: OCR took longer than the 0.001s time limit" in said and "side.png: OCR took" in said
    cfg = RealConfig(images=str(d), out=str(tmp_path / "out2"), workers=workers, skip_empty=False)
    assert build_real_shards(cfg).count == 3  # the default limit leaves them be


@pytest.mark.parametrize(
    "override, message",
    [
        ("ocr_time_limit=-1", r"^ocr_time_limit: must be a number of seconds >= 0"),
        ("ocr_time_limit=nan", r"^ocr_time_limit: must be a number of seconds >= 0"),
        ("ocr_time_limit=inf", r"^ocr_time_limit: must be a number of seconds >= 0"),
        ("max_aspect=0.5", r"^max_aspect: must be >= 1"),
    ],
)
def test_limits_are_validated(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RealConfig, values={"images": str(tmp_path)}, overrides=[override])


def test_manifest_must_be_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^manifest: '.*' is not a file"):
        load_config(RealConfig, values={"manifest": str(tmp_path)})


def _manifest(tmp_path, data: bytes) -> Path:
    photo_like(0).save(tmp_path / "given.png")
    (tmp_path / "list.jsonl").write_bytes(data)
    return tmp_path / "list.jsonl"


def test_manifest_that_is_not_utf8_is_one_error_naming_the_line(tmp_path):
    good = json.dumps({"image": "given.png", "text": "café"}, ensure_ascii=False).encode()
    path = _manifest(tmp_path, good + b"\n" + good.replace("é".encode(), b"\xe9") + b"\n")
    with pytest.raises(ValueError, match=r"list\.jsonl:2: not UTF-8 text \(byte \d+ of the line\)$"):
        build_real_shards(RealConfig(manifest=str(path), out=str(tmp_path / "out"), workers=1))
    assert not (tmp_path / "out").exists()


def test_manifest_odd_lines_are_counted_skips_with_their_line(tmp_path):
    good = json.dumps({"image": "given.png", "text": "hello"})
    lines = [
        "\ufeff" + good,  # a BOM before the first line is tolerated
        "[1, 2]",
        '"given.png"',
        "null",
        "[" * 100_000,  # nested past Python's recursion limit
        json.dumps({"image": "giv\0en.png", "text": "x"}),  # os calls refuse a NUL
        json.dumps({"image": "given.png", "text": 3}),
        json.dumps({"image": "missing.png", "text": "x"}),
    ]
    path = _manifest(tmp_path, "\n".join(lines).encode())
    report, said = _build(tmp_path, manifest=str(path), locate_text=False)
    assert report.count == 1
    assert dict(report.skipped) == {"bad manifest line": 6, "missing file": 1}
    for lineno in range(2, 8):
        assert f"list.jsonl:{lineno}: " in said
    assert "nested too deeply" in said and "missing.png: no such file" in said
