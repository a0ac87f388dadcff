"""Atomic file writes and folder swaps: a failure leaves the old file or folder as it was."""

from __future__ import annotations

import pytest

from glyphgen.files import replace_folder, write_atomically


def fail(path):
    path.write_text("half")
    raise OSError("disk full")


def test_write_atomically_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    write_atomically(target, lambda p: p.write_text("new"), fsync=True)
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    write_atomically(target, lambda p: p.write_text("named"), tmp=tmp_path / "config.yaml.tmp")
    assert target.read_text() == "named" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_replace_folder_checks_then_swaps(tmp_path):
    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")

    def refuse():
        raise FileExistsError("out: holds a user's files")

    with pytest.raises(FileExistsError):
        replace_folder(new, out, refuse)
    assert (out / "a").read_text() == "old" and new.is_dir()
    replace_folder(new, out, lambda: None)
    assert (out / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    replace_folder(fresh, tmp_path / "made")  # no old folder to move aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made", "out"]
