"""Bad-input corpus rows: shard builds (see bad_input.py).

An output folder is only ever a new or empty folder, or a shard folder glyphgen wrote (replaced with
--overwrite): a folder holding anything else is refused, and left byte-identical."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bad_input import Case
from conftest import png_bytes, text_image


def _synthetic(out: str, *more: str) -> list[str]:
    return [
        "make-shards",
        "synthetic",
        "--count",
        "4",
        "--resolution",
        "32",
        "--workers",
        "1",
        "--out",
        out,
        *more,
    ]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _important(root: Path) -> None:
    (root / "important" / "sub").mkdir(parents=True)
    (root / "important" / "thesis.txt").write_text("four years of work")
    (root / "important" / "sub" / "data.csv").write_text("1,2,3")


def _important_kept(root: Path) -> None:
    assert _tree(root / "important") == {"sub/data.csv": b"1,2,3", "thesis.txt": b"four years of work"}
    assert sorted(p.name for p in root.iterdir()) == ["important"]  # no partial folder left either


def _into_important(*more: str):
    def setup(root: Path) -> list[str]:
        _important(root)
        return _synthetic("important", *more)

    return setup


def _photos(root: Path) -> None:
    (root / "photos" / "raw").mkdir(parents=True)
    for i, word in enumerate(["cat", "dog"]):
        (root / "photos" / "raw" / f"p{i}.png").write_bytes(png_bytes(text_image(word, 32, "RGB")))
        (root / "photos" / "raw" / f"p{i}.txt").write_text(word)


def _real(images: str, out: str):
    def setup(root: Path) -> list[str]:
        _photos(root)
        return [
            "make-shards",
            "real",
            "--images",
            images,
            "--out",
            out,
            "--resolution",
            "32",
            "--workers",
            "1",
        ]

    return setup


def _photos_kept(root: Path) -> None:
    assert sorted(_tree(root / "photos")) == ["raw/p0.png", "raw/p0.txt", "raw/p1.png", "raw/p1.txt"]


def _dot_in_a_full_folder(root: Path) -> list[str]:
    (root / "notes.txt").write_text("keep")
    return _synthetic(".")


def _notes_kept(root: Path) -> None:
    assert (root / "notes.txt").read_text() == "keep"


def _stale_partial(root: Path) -> list[str]:
    finished = subprocess.Popen(["true"])
    finished.wait()  # a free PID, like a killed build's
    (root / f"s.partial-{finished.pid}").mkdir()
    (root / f"s.partial-{finished.pid}" / "shard-000000.tar").write_bytes(b"half a shard")
    return _synthetic("s")


def _only_s_left(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["s"]


def _preview_exists(root: Path) -> list[str]:
    (root / "look.png").write_bytes(b"a picture the user made")
    return _synthetic("s", "--preview", "look.png")


def _preview_kept(root: Path) -> None:
    assert (root / "look.png").read_bytes() == b"a picture the user made" and not (root / "s").exists()


def _nothing_written(root: Path) -> None:
    assert not list(root.iterdir())


CASES: list[Case] = [
    Case(
        "shards-out-holds-user-files",
        _into_important(),
        "error",
        ("important: holds files that are not glyphgen shards (sub, thesis.txt)", "choose another --out"),
        _important_kept,
    ),
    Case(
        "shards-out-holds-user-files-overwrite",
        _into_important("--overwrite"),
        "error",
        ("important: holds files that are not glyphgen shards",),
        _important_kept,
    ),
    Case(
        "shards-real-out-is-the-images-parent",
        _real("photos/raw", "photos"),
        "error",
        ("photos: holds files that are not glyphgen shards (raw)",),
        _photos_kept,
    ),
    Case(
        "shards-real-out-is-the-images-folder",
        _real("photos/raw", "photos/raw"),
        "error",
        ("raw: holds files that are not glyphgen shards (p0.png, p0.txt, p1.png and 1 more)",),
        _photos_kept,
    ),
    Case(
        "shards-out-dot",
        _dot_in_a_full_folder,
        "error",
        ("holds files that are not glyphgen shards (notes.txt)",),
        _notes_kept,
    ),
    Case(
        "shards-workers-out-of-bounds",
        lambda root: _synthetic("s", "--workers", "100000"),
        "error",
        ("workers", "must be in [0, 256], got 100000"),
        _nothing_written,
    ),
    Case(
        "shards-stale-partial-is-removed",
        _stale_partial,
        "skip",
        ("left by a build that was killed",),
        _only_s_left,
    ),
    Case(
        "shards-preview-exists",
        _preview_exists,
        "error",
        ("look.png: exists; pass --overwrite to replace it",),
        _preview_kept,
    ),
]
