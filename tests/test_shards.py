"""Shard writing: manifest, all-or-nothing output, refusing to overwrite, parallel builds in order,
and the builder base that owns the pool, the manifest and the skips."""

from __future__ import annotations

import subprocess
import tarfile
from dataclasses import dataclass

import pytest
from conftest import png_bytes, text_image, write_shards
from PIL import Image, ImageDraw

from glyphgen.config import ConfigError, load_config
from glyphgen.data.shards import (
    Sample,
    ShardBuildConfig,
    ShardBuilder,
    ShardOutput,
    ShardsExistError,
    Skipped,
    read_manifest,
)


def test_manifest_lists_every_shard_with_its_count(tmp_path):
    texts = write_shards(tmp_path / "s", 10, maxcount=4)
    m = read_manifest(tmp_path / "s")
    assert m["count"] == 10 and [s["count"] for s in m["shards"]] == [4, 4, 2]
    assert set(m["charset"]) == set("".join(texts))
    names = []
    for shard in m["shards"]:
        with tarfile.open(tmp_path / "s" / shard["name"]) as tar:
            names += tar.getnames()
    assert len(names) == 30 and {n.rsplit(".", 1)[1] for n in names} == {"png", "txt", "json"}
    assert not list(tmp_path.glob("*.partial-*"))


def test_refuses_existing_shards_without_overwrite(tmp_path):
    write_shards(tmp_path / "s", 4, maxcount=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(ShardsExistError, match="--overwrite"):
        write_shards(tmp_path / "s", 6, maxcount=2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before


def test_overwrite_replaces_whole_folder(tmp_path):
    write_shards(tmp_path / "s", 10, maxcount=2)  # 5 shards
    with ShardOutput(tmp_path / "s", maxcount=4, overwrite=True) as out:
        out.write(Sample("a", png_bytes(text_image("a")), "a"))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json", "shard-000000.tar"]


def test_failure_mid_write_keeps_old_data_and_leaves_no_partial(tmp_path):
    write_shards(tmp_path / "s", 4, maxcount=2)
    before = read_manifest(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with ShardOutput(tmp_path / "s", maxcount=2, overwrite=True) as out:
            out.write(Sample("a", png_bytes(text_image("a")), "a"))
            raise RuntimeError("worker died")
    assert read_manifest(tmp_path / "s") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_dotted_key_rejected(tmp_path):
    with pytest.raises(ValueError, match="dot"), ShardOutput(tmp_path / "s", maxcount=2) as out:
        out.write(Sample("a.b", b"", "a"))


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)


@dataclass
class CounterConfig(ShardBuildConfig):
    out: str = "unused"
    """Folder the shards and manifest.json are written to."""
    count: int = 20
    """Tasks 0 .. count-1; every one with i % 5 == 3 is skipped."""


class CounterBuilder(ShardBuilder):
    """A tiny kind of shards: solid grey images holding their counter as text."""

    kind = "counter"
    chunksize = 3

    def tasks(self):
        return range(self.cfg.count)

    def setup(self):  # per-process state, as a renderer or an OCR engine would be
        self.grey = 128

    def make_sample(self, i: int):
        if i % 5 == 3:
            return Skipped("unlucky", f"item {i}")
        img = Image.new("L", (self.cfg.resolution,) * 2, self.grey)
        ImageDraw.Draw(img).text((2, 2), str(i), fill=0)
        return Sample(f"{i:04d}", png_bytes(img), str(i), {"grey": self.grey})

    def manifest_extra(self):
        return {"asked": self.cfg.count}


class NothingBuilder(CounterBuilder):
    def tasks(self):
        return [3, 8]


@pytest.mark.parametrize("workers", [1, 2])
def test_build_keeps_order_and_counts_skips(tmp_path, workers):
    cfg = CounterConfig(out=str(tmp_path / "s"), shard_size=8, workers=workers)
    with pytest.warns(UserWarning, match="skipped \\(unlucky\\)"):
        report = CounterBuilder(cfg).build()
    assert report.count == 16 and report.skipped["unlucky"] == 4 and report.shards == 2
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        keys = [n.split(".")[0] for n in tar.getnames() if n.endswith(".txt")]
    assert keys == ["0000", "0001", "0002", "0004", "0005", "0006", "0007", "0009"]


def test_build_with_nothing_written_makes_no_folder(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        NothingBuilder(CounterConfig(out=str(tmp_path / "s"), workers=1)).build()
    assert not (tmp_path / "s").exists()


def test_a_builder_subclass_gets_the_pool_the_manifest_and_the_skip_counts(tmp_path, capsys):
    built = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cfg = CounterConfig(out=str(out), resolution=32, count=8, shard_size=4, workers=workers)
        with pytest.warns(UserWarning, match=r"^skipped \(unlucky\): item 3$"):
            report = CounterBuilder(cfg).build()  # make_sample fails unless setup ran in its process
        assert report.count == 7 and dict(report.skipped) == {"unlucky": 1} and report.workers == workers
        assert f"wrote 7 samples in 2 shards to {out}" in capsys.readouterr().err
        assert "skipped: 1 unlucky" in report.summary()
        built[workers] = {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
        manifest = read_manifest(out)
        assert manifest["kind"] == "counter" and manifest["resolution"] == 32 and manifest["asked"] == 8
        assert manifest["count"] == 7 and [s["count"] for s in manifest["shards"]] == [4, 3]
        common = {"format", "count", "shards", "members", "charset", "kind", "resolution", "skipped"}
        assert set(manifest) == common | {"asked"} and manifest["skipped"] == {"unlucky": 1}
    assert list(built[1]) == ["shard-000000.tar", "shard-000001.tar"] and built[1] == built[2]


def test_the_base_config_checks_every_builders_common_fields():
    with pytest.raises(ConfigError, match=r"^resolution: must be one of 32, 64, 128, 256, got 48"):
        load_config(CounterConfig, overrides=["resolution=48"])
    with pytest.raises(ConfigError, match=r"^workers: must be in \[0, 256\]"):
        load_config(CounterConfig, values={"workers": 1000})
    assert load_config(CounterConfig, overrides=["count=3"]).shard_size == 10_000


# -- the output folder: only glyphgen's own shard folders are ever replaced --


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _build(out, overwrite=False, n=2):
    with ShardOutput(out, maxcount=2, overwrite=overwrite) as sink:
        for j in range(n):
            sink.write(Sample(f"k{j}", png_bytes(text_image(str(j))), str(j)))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_other_files_is_never_replaced(tmp_path, overwrite):
    important = tmp_path / "important"
    (important / "sub").mkdir(parents=True)
    (important / "thesis.txt").write_text("four years")
    (important / "sub" / "data.csv").write_text("1,2")
    (important / "shard-000000.tar").write_bytes(b"a tar a user keeps here")
    before = _tree(important)
    with pytest.raises(
        ShardsExistError, match=r"important: holds files that are not glyphgen shards \(sub, "
    ):
        _build(important, overwrite)
    assert _tree(important) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["important"]


def test_a_file_or_link_as_out_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(ShardsExistError, match="notes.txt: exists and is not a folder"):
        _build(tmp_path / "notes.txt", overwrite=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ShardsExistError, match="link: exists and is not a folder"):
        _build(tmp_path / "link", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep" and (tmp_path / "link").is_symlink()


def test_an_empty_folder_and_dot_are_fine(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    _build(tmp_path / "empty", n=2)
    assert read_manifest(tmp_path / "empty")["count"] == 2
    monkeypatch.chdir(tmp_path / "empty")
    _build(".", overwrite=True, n=1)
    assert read_manifest(tmp_path / "empty")["count"] == 1


def test_stale_partials_of_dead_builds_are_removed(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its PID is free now, like a killed build's
    stale = tmp_path / f"s.partial-{finished.pid}"
    stale.mkdir()
    (stale / "shard-000000.tar").write_bytes(b"half")
    running = tmp_path / "s.partial-1"  # PID 1 lives: a build in progress elsewhere
    running.mkdir()
    foreign = tmp_path / f"s.old-{finished.pid}"  # a dead PID, but holding more than shards
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.warns(
        UserWarning, match=f"removed s.partial-{finished.pid}, left by a build that was killed"
    ):
        _build(tmp_path / "s")
    assert not stale.exists() and running.exists() and (foreign / "notes.txt").exists()
    assert read_manifest(tmp_path / "s")["count"] == 2


def test_a_manifest_that_is_not_an_object_or_a_folder_gets_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"manifest.json: not a glyphgen shard manifest \(a JSON list\)"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ValueError, match="manifest.json: is a folder"):
        read_manifest(tmp_path)
