"""merge-shards drops images found in more than one part (glyphgen/data/merge.py): the first copy in
part-index order stays, only shards that held a later copy are written anew (the others stay hard
links to the parts' files, which are never changed), and the manifest and report count the drops."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from test_real_filters import _add, word_image

from glyphgen import cli
from glyphgen.data.loader import LoaderConfig, make_loader
from glyphgen.data.merge import merge_parts
from glyphgen.data.real import RealConfig
from glyphgen.data.real_wds import build_real
from glyphgen.data.shards import read_manifest, shard_members

pytestmark = pytest.mark.filterwarnings("ignore:skipped")

# Input shard -> its images' words; the same word is the same image. Part 0/2 takes shards 0 and 2
# (and drops shard 2's second SALE itself), part 1/2 takes shards 1 and 3, whose SALE and OPEN the
# merge drops: shard 1 is rewritten with CAFE alone, shard 3 is left with nothing.
SHARDS = [["SALE", "OPEN"], ["SALE", "CAFE"], ["STOP", "SALE"], ["OPEN"]]
UNIQUE = ["CAFE", "OPEN", "SALE", "STOP"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("merge")
    (root / "wds").mkdir()
    for s, words in enumerate(SHARDS):
        with tarfile.open(root / "wds" / f"{s:05d}.tar", "w") as tar:
            for i, word in enumerate(words):
                buf = io.BytesIO()
                word_image(word).save(buf, format="PNG")
                _add(tar, f"{s:05d}{i:04d}.png", buf.getvalue())
    spec = f"{root}/wds/{{00000..00003}}.tar"
    folders = [root / "p0", root / "p1"]
    for part, out in zip(("0/2", "1/2"), folders, strict=True):
        cfg = RealConfig(
            webdataset=spec, part=part, out=str(out), resolution=32, workers=1, drop_duplicates=True
        )
        build_real(cfg)
    return folders


def tar_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def tar_samples(folder: Path) -> list[tuple[str, str, dict]]:
    """(shard, transcript, json) of every sample in the folder's tars."""
    return [
        (shard.name, parts["txt"].decode(), json.loads(parts["json"]))
        for shard in sorted(folder.glob("*.tar"))
        for parts in shard_members(shard, ["txt", "json"]).values()
    ]


def loader_texts(folder: Path) -> list[str]:
    cfg = LoaderConfig(shards=str(folder), resolution=32, batch_size=1, num_workers=0, shuffle_buffer=0)
    return sorted(t for batch in make_loader(cfg) for t in batch["text"])


def test_merge_keeps_each_image_once_and_leaves_the_parts_alone(parts, tmp_path, capsys):
    p0, p1 = parts
    assert read_manifest(p0)["skipped"] == {"duplicate image": 1}  # within part 0: its own drop
    assert len(tar_samples(p0)) + len(tar_samples(p1)) == 6
    before = {part: tar_hashes(part) for part in parts}
    capsys.readouterr()
    out = tmp_path / "merged"
    merged = merge_parts(out, [p1, p0])  # the command line's order does not decide which copy stays
    assert "merge: dropped 2 duplicate images found in more than one part" in capsys.readouterr().err

    assert loader_texts(out) == UNIQUE
    kept = tar_samples(out)
    hashes = [meta["image_hash"] for _, _, meta in kept]
    assert len(hashes) == len(set(hashes)) == 4
    # Part 0 comes first: its SALE and OPEN stay, part 1's copies go.
    assert sorted((shard, text) for shard, text, _ in kept) == [
        ("shard-000000.tar", "OPEN"),
        ("shard-000000.tar", "SALE"),
        ("shard-000001.tar", "CAFE"),
        ("shard-000002.tar", "STOP"),
    ]
    assert merged == read_manifest(out) and merged["count"] == 4
    assert merged["shards"] == [
        {"name": "shard-000000.tar", "count": 2},
        {"name": "shard-000001.tar", "count": 1},
        {"name": "shard-000002.tar", "count": 1},
    ]
    assert merged["skipped"] == {"duplicate image": 3}  # part 0's one and the merge's two
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 4 and report["skipped"] == {"duplicate image": 3} and report["seen"] == 7
    assert report["histograms"]["chars"]["n"] == 4 and sum(report["histograms"]["chars"]["counts"]) == 4
    assert sorted(s["text"] for s in report["kept_samples"]) == UNIQUE
    assert (out / "report.png").is_file()

    # Untouched shards are links to the parts' files; the rewritten one is a file of its own.
    for name in ("shard-000000.tar", "shard-000002.tar"):
        assert (out / name).stat().st_ino == (p0 / name).stat().st_ino
    rewritten = out / "shard-000001.tar"
    assert rewritten.stat().st_ino != (p1 / rewritten.name).stat().st_ino and rewritten.stat().st_nlink == 1
    assert not (out / "shard-000003.tar").exists()
    # ...holding the kept members as they were in the part: headers and bytes.
    with tarfile.open(p1 / rewritten.name) as src, tarfile.open(rewritten) as dst:
        old = {m.name: (m.get_info(), src.extractfile(m).read()) for m in src}
        new = {m.name: (m.get_info(), dst.extractfile(m).read()) for m in dst}
    assert new and all(old[name] == value for name, value in new.items())
    assert {part: tar_hashes(part) for part in parts} == before  # the parts' files are unchanged

    # The same merge again gives the same bytes.
    first = tar_hashes(out)
    merge_parts(out, [p0, p1], overwrite=True)
    assert tar_hashes(out) == first and {part: tar_hashes(part) for part in parts} == before


def test_keep_duplicates_links_every_shard(parts, tmp_path, capsys):
    p0, p1 = parts
    before = {part: tar_hashes(part) for part in parts}
    merged = merge_parts(tmp_path / "api", parts, drop_duplicates=False)
    assert "merge: dropped" not in capsys.readouterr().err
    assert merged["count"] == 6 and merged["skipped"] == {"duplicate image": 1}
    assert loader_texts(tmp_path / "api") == sorted(["CAFE", "OPEN", "OPEN", "SALE", "SALE", "STOP"])
    for part in parts:
        for name in before[part]:
            assert (tmp_path / "api" / name).stat().st_ino == (part / name).stat().st_ino

    out = tmp_path / "cli"
    assert cli.main(["merge-shards", str(out), str(p0), str(p1), "--keep-duplicates"]) == 0
    assert read_manifest(out)["count"] == 6 and len(tar_samples(out)) == 6
    assert json.loads((out / "report.json").read_text())["kept"] == 6
    assert cli.main(["merge-shards", str(out), str(p0), str(p1), "--overwrite"]) == 0
    assert read_manifest(out)["count"] == 4 and "merged 2 parts: 4 samples" in capsys.readouterr().out
    assert {part: tar_hashes(part) for part in parts} == before


def test_a_damaged_part_shard_is_a_one_line_error(parts, tmp_path, capsys):
    """A part's shard truncated after it was written (a bad copy): the merge names the file and
    writes nothing; the part's other files are left alone."""
    copies = []
    for part in parts:
        copy = tmp_path / part.name
        shutil.copytree(part, copy)
        copies.append(copy)
    shard = sorted(copies[1].glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:700])
    code = cli.main(["merge-shards", str(tmp_path / "merged"), *map(str, copies)])
    err = capsys.readouterr().err
    assert code == 2 and "unreadable shard" in err and shard.name in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "merged").exists()
