"""Bad-input corpus rows: sampling options and outputs (see bad_input.py).

They use the tiny bundle made by an earlier glyphgen (tests/data/bundle-74f265e): fast, untrained."""

from __future__ import annotations

import shutil
from pathlib import Path

from bad_input import Case

BUNDLE = Path(__file__).parent / "data" / "bundle-74f265e"


def _sample(*more: str, rerank: bool = False):
    def setup(root: Path) -> list[str]:
        (root / "keep.png").write_bytes(b"an image the user made")
        (root / "keep.json").write_text("{}")
        (root / "best.json").write_text("{}")
        extra = ["--rerank", "--n", "2"] if rerank else []
        return ["sample", "hi", "--base", str(BUNDLE), "--steps", "2", "--device", "cpu", *extra, *more]

    return setup


def _kept(root: Path) -> None:
    assert (root / "keep.png").read_bytes() == b"an image the user made"
    assert (root / "keep.json").read_text() == (root / "best.json").read_text() == "{}"
    assert sorted(p.name for p in root.iterdir()) == ["best.json", "keep.json", "keep.png"]


def _bundle_steps(root: Path) -> list[str]:
    shutil.copytree(BUNDLE, root / "b")
    config = root / "b" / "config.yaml"
    config.write_text(config.read_text().replace("  steps: 1000\n", "  steps: 1000000000\n"))
    return ["sample", "hi", "--base", "b", "--out", "x.png", "--steps", "2", "--device", "cpu"]


CASES: list[Case] = [
    *(
        Case(
            f"sample-guidance-{name}",
            _sample("--guidance", value, "--out", "x.png"),
            "error",
            (f"guidance: must be a finite number >= 0, got {shown}",),
            _kept,
        )
        for name, value, shown in [("nan", "nan", "nan"), ("inf", "inf", "inf"), ("negative", "-5", "-5.0")]
    ),
    Case(
        "sample-out-exists",
        _sample("--out", "keep.png"),
        "error",
        ("keep.png: exists; pass --overwrite to replace it",),
        _kept,
    ),
    Case(
        "sample-rerank-json-exists",
        _sample("--out", "keep.png", rerank=True),
        "error",
        ("keep.png: exists; pass --overwrite",),
        _kept,
    ),
    Case(
        "sample-rerank-report-exists",
        _sample("--out", ".", rerank=True),
        "error",
        ("best.json: exists; pass --overwrite",),
        _kept,
    ),
    Case(
        "bundle-diffusion-steps-out-of-bounds",
        _bundle_steps,
        "error",
        ("steps", "must be in [2, 10000], got 1000000000"),
    ),
]
