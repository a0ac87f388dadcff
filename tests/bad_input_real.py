"""Bad-input corpus rows: real-image shard builds (see bad_input.py).

One bad image is a counted skip naming it, never the end of the build: extreme aspect ratios are
skipped before any OCR, the OCR engine's errors and its per-image time limit are skips too. A manifest
that cannot be a JSONL file (a folder, not UTF-8) is one error naming it, and its line."""

from __future__ import annotations

import json
from pathlib import Path

from bad_input import Case
from conftest import png_bytes, text_image


def _real(*args: str) -> list[str]:
    return ["make-shards", "real", *args, "--out", "out", "--resolution", "32", "--workers", "1"]


def _captioned(folder: Path) -> None:
    """One ordinary image with a sidecar transcript, so the build has a sample to write."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ok.png").write_bytes(png_bytes(text_image("ok", 64, "RGB")))
    (folder / "ok.txt").write_text("ok")


def _thin(*overrides: str):
    def setup(root: Path) -> list[str]:
        _captioned(root / "imgs")
        (root / "imgs" / "banner.png").write_bytes(png_bytes(text_image("", 20, "RGB").resize((3000, 20))))
        return _real("--images", "imgs", "locate_text=false", *overrides)

    return setup


def _slow_ocr(root: Path) -> list[str]:
    _captioned(root / "imgs")
    (root / "imgs" / "read.png").write_bytes(png_bytes(text_image("coffee", 128, "RGB")))
    return _real("--images", "imgs", "locate_text=false", "ocr_time_limit=0.001")


def _one_sample_written(root: Path) -> None:
    assert json.loads((root / "out" / "manifest.json").read_text())["count"] == 1


def _manifest_folder(root: Path) -> list[str]:
    (root / "mdir").mkdir()
    return _real("--manifest", "mdir")


def _manifest(lines: list[bytes]):
    def setup(root: Path) -> list[str]:
        _captioned(root)
        (root / "list.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        return _real("--manifest", "list.jsonl", "locate_text=false")

    return setup


_GOOD = json.dumps({"image": "ok.png", "text": "ok"}).encode()


def _nothing_written(root: Path) -> None:
    assert not (root / "out").exists()


CASES: list[Case] = [
    Case(
        "real-thin-image-skipped-before-ocr",
        _thin(),
        "skip",
        ("skipped (extreme aspect ratio): banner.png: 3000x20 is over max_aspect=50:1",),
        _one_sample_written,
    ),
    Case(
        "real-ocr-engine-error-skipped",
        _thin("max_aspect=1000"),
        "skip",
        ("skipped (OCR failed): banner.png: the OCR engine failed on this 3000x20 image (ResizeImgError)",),
        _one_sample_written,
    ),
    Case(
        "real-ocr-time-limit-skipped",
        _slow_ocr,
        "skip",
        ("skipped (OCR time limit): read.png: OCR took longer than the 0.001s time limit",),
        _one_sample_written,
    ),
    Case(
        "real-manifest-is-a-folder",
        _manifest_folder,
        "error",
        ("manifest: 'mdir' is not a file",),
        _nothing_written,
    ),
    Case(
        "real-manifest-not-utf8",
        _manifest([_GOOD, _GOOD.replace(b'"ok"}', b'"\xe9t\xe9"}')]),
        "error",
        ("list.jsonl:2: not UTF-8 text",),
        _nothing_written,
    ),
    Case(
        "real-manifest-odd-lines-skipped",
        _manifest([_GOOD, b"[1, 2]", b"[" * 100_000, b'{"text": "no image"}', b'{"image": "missing.png"}']),
        "skip",
        (
            "skipped (bad manifest line): list.jsonl:2: needs",
            "list.jsonl:3: nested too deeply",
            "list.jsonl:4: needs",
            "skipped (missing file): missing.png",
        ),
        _one_sample_written,
    ),
]
