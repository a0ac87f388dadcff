"""Real-image build filters (glyphgen/data/real_filters.py) and the build report
(glyphgen/data/real_report.py): each filter drops what it should under its own reason, the defaults
keep everything, and every build, part and merge writes report.json and report.png."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import font_roboto
import pytest
from PIL import Image, ImageDraw

from glyphgen.config import ConfigError, load_config
from glyphgen.data import real_report
from glyphgen.data.fonts import load_font
from glyphgen.data.merge import merge_parts
from glyphgen.data.real import RealConfig, read_samples
from glyphgen.data.real_filters import union_area
from glyphgen.data.real_wds import build_real
from glyphgen.data.shards import read_manifest

pytestmark = pytest.mark.filterwarnings("ignore:skipped")
BOLD = str(Path(font_roboto.__file__).parent / "files" / "Roboto-Bold.ttf")

# name -> sidecar transcript; "f_twin" has the same pixels as "b_day".
SIDECARS = {
    "a_short": "hi",
    "b_day": "good day",
    "c_cafe": "café",
    "d_lines": "one\ntwo\nsix",
    "e_long": "a longer line of text",
    "f_twin": "twin",
}


def flat(seed: int, size=(96, 80)) -> Image.Image:
    return Image.new("RGB", size, (40 + 30 * seed, 200 - 20 * seed, 120))


def word_image(word: str, size=(128, 128), font_size=34, colour=(20, 20, 20)) -> Image.Image:
    img = Image.new("RGB", size, (235, 230, 220))
    ImageDraw.Draw(img).text(
        (size[0] // 2, size[1] // 2), word, font=load_font(BOLD, font_size), fill=colour, anchor="mm"
    )
    return img


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sidecars") / "images"
    d.mkdir()
    for i, (name, text) in enumerate(SIDECARS.items()):
        flat(1 if name == "f_twin" else i).save(d / f"{name}.png")
        (d / f"{name}.txt").write_text(text, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Images the OCR reads: big clear words, a small word on a wide page, a faint word, a blank."""
    d = tmp_path_factory.mktemp("photos") / "images"
    d.mkdir()
    word_image("SALE").save(d / "a_sale.png")
    word_image("OPEN").save(d / "b_open.png")
    word_image("TAXI", size=(256, 256), font_size=22).save(d / "c_small.png")
    word_image("MILK", colour=(150, 145, 140)).save(d / "d_faint.png")
    Image.new("RGB", (100, 100), "white").save(d / "e_blank.png")
    return d


def build(tmp_path: Path, images: Path, **overrides) -> Path:
    cfg = RealConfig(images=str(images), out=str(tmp_path / "out"), resolution=64, workers=1, **overrides)
    build_real(cfg)
    return tmp_path / "out"


def build_sidecars(tmp_path: Path, images: Path, **overrides) -> Path:
    return build(tmp_path, images, locate_text=False, **overrides)  # no OCR at all


def kept(folder: Path) -> dict[str, tuple[str, dict]]:
    return {Path(meta["source"]).stem: (text, meta) for _, text, meta in read_samples(folder)}


@pytest.fixture(scope="module")
def default_photos(photos, tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("default"), photos)


def test_defaults_keep_what_they_kept_and_record_the_numbers(default_photos, sidecars, tmp_path):
    got = kept(default_photos)
    assert {stem: text for stem, (text, _) in got.items()} == {
        "a_sale": "SALE",
        "b_open": "OPEN",
        "c_small": "TAXI",
        "d_faint": "MILK",
    }
    assert read_manifest(default_photos)["skipped"] == {"empty transcript": 1}
    for _, meta in got.values():
        assert meta["lines"] == 1 and 0 < meta["ocr_confidence"] <= 1
        assert len(meta["text_boxes"]) == len(meta["ocr_scores"]) >= 1
        assert all(0 <= v <= 64 for box in meta["text_boxes"] for v in box)
        assert 0 < meta["text_area"] < 1
        assert "image_hash" not in meta and "stripped" not in meta
    assert got["c_small"][1]["text_area"] < got["a_sale"][1]["text_area"]
    side = build_sidecars(tmp_path, sidecars)
    assert {stem: text for stem, (text, _) in kept(side).items()} == SIDECARS
    assert read_manifest(side)["skipped"] == {}


@pytest.mark.parametrize(
    ("overrides", "reason", "dropped"),
    [
        ({"min_chars": 3}, "too few characters", "a_short"),
        ({"max_chars": 12}, "too many characters", "e_long"),
        ({"max_lines": 2}, "too many lines", "d_lines"),
        ({"outside_alphabet": "drop"}, "outside alphabet", "c_cafe"),
        ({"drop_duplicates": True}, "duplicate image", "f_twin"),
    ],
)
def test_each_transcript_filter_drops_and_counts(sidecars, tmp_path, overrides, reason, dropped):
    out = build_sidecars(tmp_path, sidecars, **overrides)
    assert set(kept(out)) == set(SIDECARS) - {dropped}
    assert read_manifest(out)["skipped"] == {reason: 1}
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == {reason: 1} and report["kept"] == len(SIDECARS) - 1
    assert [d["reason"] for d in report["dropped_samples"]] == [reason]
    assert dropped in report["dropped_samples"][0]["detail"]


def test_strip_removes_only_the_characters_outside_the_alphabet(sidecars, tmp_path):
    got = kept(build_sidecars(tmp_path, sidecars, outside_alphabet="strip"))
    assert {stem: text for stem, (text, _) in got.items()} == {**SIDECARS, "c_cafe": "caf"}
    assert got["c_cafe"][1]["stripped"] == 1 and "stripped" not in got["b_day"][1]


@pytest.mark.parametrize(
    ("field", "reason"), [("min_mean_confidence", "low OCR confidence"), ("min_text_area", "small text area")]
)
def test_ocr_filters_drop_below_the_threshold(default_photos, photos, tmp_path, field, reason):
    key = {"min_mean_confidence": "ocr_confidence", "min_text_area": "text_area"}[field]
    values = sorted((meta[key], stem) for stem, (_, meta) in kept(default_photos).items())
    assert values[0][0] < values[1][0]
    threshold = (values[0][0] + values[1][0]) / 2  # drops exactly the lowest
    out = build(tmp_path, photos, **{field: threshold})
    assert set(kept(out)) == {stem for _, stem in values[1:]}
    assert read_manifest(out)["skipped"] == {"empty transcript": 1, reason: 1}


def test_report_json_and_png(default_photos):
    report = json.loads((default_photos / "report.json").read_text())
    assert report["kept"] == 4 and report["seen"] == 5 and report["skipped"] == {"empty transcript": 1}
    hists = report["histograms"]
    assert set(hists) == {"chars", "lines", "ocr_confidence", "text_area"}
    for h in hists.values():
        assert h["n"] == 4 and sum(h["counts"]) == 4 and len(h["counts"]) == len(h["edges"])
    assert hists["chars"]["counts"][1] == 4 and hists["chars"]["mean"] == 4  # 4 characters each
    assert hists["lines"]["counts"][1] == 4
    assert sorted(s["text"] for s in report["kept_samples"]) == ["MILK", "OPEN", "SALE", "TAXI"]
    (blank,) = report["dropped_samples"]
    assert blank["reason"] == "empty transcript" and "e_blank" in blank["detail"] and blank["thumb"]
    with Image.open(default_photos / "report.png") as png:
        assert png.format == "PNG" and 700 <= png.width <= 2000 and 500 <= png.height <= 3000
        assert len(set(png.convert("L").getdata())) > 50  # drawn, not blank


def test_rebuild_over_a_report_needs_overwrite_and_progress_is_printed(
    sidecars, tmp_path, capsys, monkeypatch
):
    out = build_sidecars(tmp_path, sidecars)
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_sidecars(tmp_path, sidecars)
    monkeypatch.setattr(real_report, "PROGRESS_EVERY", 0.0)
    capsys.readouterr()
    cfg = RealConfig(
        images=str(sidecars), out=str(out), resolution=64, workers=1, locate_text=False, min_chars=3
    )
    build_real(cfg, overwrite=True)
    assert "images/s" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["skipped"] == {"too few characters": 1}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("min_text_area=1.5", "min_text_area"),
        ("min_mean_confidence=-0.1", "min_mean_confidence"),
        ("outside_alphabet=zap", "keep, drop, strip"),
        ("max_lines=-1", "max_lines"),
    ],
)
def test_bad_filter_settings_are_one_line(sidecars, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(RealConfig, overrides=[f"images={sidecars}", override])
    with pytest.raises(ConfigError, match="below min_chars"):
        load_config(RealConfig, overrides=[f"images={sidecars}", "min_chars=5", "max_chars=2"])


def test_union_area_counts_overlaps_once():
    assert union_area([(0, 0, 2, 2), (1, 1, 3, 3)]) == 7
    assert union_area([(0, 0, 4, 1), (0, 0, 4, 1)]) == 4 and union_area([]) == 0


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_parts_report_drop_duplicates_and_merge_combines(tmp_path):
    # Shard 2 repeats shard 0's first image: part 0/2 (shards 0 and 2) drops it as a duplicate.
    shards = [["SALE", "OPEN"], ["CAFE"], ["SALE", "STOP"]]
    root = tmp_path / "wds"
    root.mkdir()
    for s, words in enumerate(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i, word in enumerate(words):
                buf = io.BytesIO()
                word_image(word).save(buf, format="PNG")
                _add(tar, f"{s:05d}{i:04d}.png", buf.getvalue())
    parts = []
    for part in ("0/2", "1/2"):
        out = tmp_path / f"p{part[0]}"
        spec = f"{root}/{{00000..00002}}.tar"
        cfg = RealConfig(
            webdataset=spec, part=part, out=str(out), resolution=64, workers=1, drop_duplicates=True
        )
        build_real(cfg)
        parts.append(out)
    first = json.loads((parts[0] / "report.json").read_text())
    assert first["kept"] == 3 and first["skipped"] == {"duplicate image": 1} and first["part"] == "0/2"
    assert read_manifest(parts[0])["skipped"] == {"duplicate image": 1}
    assert [d["reason"] for d in first["dropped_samples"]] == ["duplicate image"]
    assert (parts[0] / "report.png").is_file() and (parts[1] / "report.png").is_file()
    # Stopped before its last shard: the resumed part still drops the duplicate of a finished shard.
    before = {f.name: f.read_bytes() for f in parts[0].iterdir() if f.name != ".lock"}
    for name in ("manifest.json", "report.json", "report.png", "shard-000002.tar", "shard-000002.json"):
        (parts[0] / name).unlink()
    spec = f"{root}/{{00000..00002}}.tar"
    build_real(
        RealConfig(
            webdataset=spec, part="0/2", out=str(parts[0]), resolution=64, workers=1, drop_duplicates=True
        )
    )
    assert {f.name: f.read_bytes() for f in parts[0].iterdir() if f.name != ".lock"} == before
    merged = merge_parts(tmp_path / "merged", parts)
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert report["kept"] == merged["count"] == 4 and report["skipped"] == {"duplicate image": 1}
    assert report["parts"] == ["0/2", "1/2"] and report["histograms"]["chars"]["n"] == 4
    assert sorted(s["text"] for s in report["kept_samples"]) == ["CAFE", "OPEN", "SALE", "STOP"]
    with Image.open(tmp_path / "merged" / "report.png") as png:
        assert png.width >= 700 and png.height >= 500
