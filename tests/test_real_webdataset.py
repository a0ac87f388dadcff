"""Stage-2 shards from img2dataset-style WebDataset tars (glyphgen/data/real_wds.py): OCR transcripts
with captions kept as metadata, disjoint parts whose union is the whole, merging into a folder the
loader reads, SIGKILL-and-resume byte-identical to an uninterrupted run, and one-line errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import font_roboto
import pytest
from bundle_fixtures import _stage
from conftest import one_line_error
from PIL import Image, ImageDraw

from glyphgen import cli
from glyphgen.data.fonts import load_font
from glyphgen.data.loader import LoaderConfig, make_loader, resolve_shards
from glyphgen.data.merge import merge_parts
from glyphgen.data.real import RealConfig, read_samples
from glyphgen.data.real_wds import build_real
from glyphgen.data.shards import read_manifest
from glyphgen.training.train import train_stage

pytestmark = pytest.mark.filterwarnings("ignore:skipped")
BOLD = str(Path(font_roboto.__file__).parent / "files" / "Roboto-Bold.ttf")
REPO = Path(__file__).resolve().parents[1]

# Input shard -> its samples' words ("" : a blank image, whose empty transcript is skipped; None: a
# sample with a caption and json but no image). The last shard is the largest, so a run is still
# busy when the first output shard appears.
SHARDS = [
    ["SALE", "OPEN", None],
    ["CAFE", "EXIT", ""],
    ["STOP", "HOTEL", "PARK"],
    ["BOOK", "MILK", "TAXI", "BANK"],
]
WORDS = [w for shard in SHARDS for w in shard if w]


def word_jpg(word: str, i: int) -> bytes:
    size = (128, 96) if i % 2 else (112, 112)
    img = Image.new("RGB", size, (235, 230, 220))
    if word:
        draw = ImageDraw.Draw(img)
        draw.text(
            (size[0] // 2, size[1] // 2), word, font=load_font(BOLD, 30), fill=(20, 20, 20), anchor="mm"
        )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """img2dataset's layout: shards/0000N.tar with KEY.jpg, KEY.txt (caption), KEY.json."""
    root = tmp_path_factory.mktemp("wds") / "shards"
    root.mkdir()
    for s, words in enumerate(SHARDS):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i, word in enumerate(words):
                key = f"{s:05d}{i:04d}"
                if word is not None:
                    _add(tar, f"{key}.jpg", word_jpg(word, i))
                _add(tar, f"{key}.txt", f"a photo of a sign saying {word or 'nothing'}".encode())
                _add(tar, f"{key}.json", json.dumps({"url": f"http://example.com/{key}.jpg"}).encode())
    return root


def spec_of(inputs: Path) -> str:
    return f"{inputs}/{{00000..00003}}.tar"


def run(inputs: Path, out: Path, part: str = "0/1", workers: int = 1, spec: str | None = None):
    cfg = RealConfig(
        webdataset=spec or spec_of(inputs), part=part, out=str(out), resolution=64, workers=workers
    )
    return build_real(cfg)


def samples(folder: Path) -> dict[str, tuple[bytes, str, dict]]:
    return {meta["key"]: (png, text, meta) for png, text, meta in _keyed(folder)}


def _keyed(folder: Path):
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name in sorted(members):
            key, _, ext = name.partition(".")
            if ext == "png":
                meta = json.loads(members[f"{key}.json"])
                yield members[name], members[f"{key}.txt"].decode(), {**meta, "key": key}


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "all"
    run(inputs, out)
    return out


def test_single_part_transcribes_with_ocr_and_keeps_captions(single):
    got = samples(single)
    assert sorted(text for _, text, _ in got.values()) == sorted(WORDS)
    for key, (png, text, meta) in got.items():
        assert meta["transcript"] == "ocr"
        assert meta["caption"] == f"a photo of a sign saying {text}"  # the caption, never the transcript
        assert meta["url"] == f"http://example.com/{meta['input_key']}.jpg"
        assert key == f"{int(meta['input_key'][:5]):06d}_{int(meta['input_key'][5:]):06d}"
        assert Image.open(io.BytesIO(png)).size == (64, 64)
    manifest = read_manifest(single)
    assert manifest["count"] == len(WORDS) and manifest["part"] == "0/1" and manifest["resolution"] == 64
    assert manifest["skipped"] == {"empty transcript": 1, "no image member": 1}
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert resolve_shards(str(single)).counts == [2, 2, 3, 4]  # the part folder is a shard folder


def test_parts_are_disjoint_and_their_union_is_the_single_run(inputs, single, tmp_path, capsys):
    run(inputs, tmp_path / "p0", "0/2", workers=2)
    run(inputs, tmp_path / "p1", "1/2")
    p0, p1 = samples(tmp_path / "p0"), samples(tmp_path / "p1")
    assert p0 and p1 and not set(p0) & set(p1)
    assert not {p.name for p in (tmp_path / "p0").glob("*.tar")} & {
        p.name for p in (tmp_path / "p1").glob("*.tar")
    }
    whole = samples(single)
    union = {**p0, **p1}
    assert {k: (png, text) for k, (png, text, _) in union.items()} == {
        k: (png, text) for k, (png, text, _) in whole.items()
    }

    merged = tmp_path / "merged"
    before = {part: files(tmp_path / part) for part in ("p0", "p1")}
    capsys.readouterr()
    assert cli.main(["merge-shards", str(merged), str(tmp_path / "p1"), str(tmp_path / "p0")]) == 0
    manifest = read_manifest(merged)
    assert manifest["count"] == len(WORDS) and manifest["parts"] == ["0/2", "1/2"]
    assert sorted(p.name for p in merged.iterdir()) == ["manifest.json", "report.json", "report.png"] + [
        f"shard-{i:06d}.tar" for i in range(4)
    ]
    assert manifest["skipped"] == read_manifest(single)["skipped"]
    parts = [str(tmp_path / "p0"), str(tmp_path / "p1")]
    capsys.readouterr()
    one_line_error(cli.main(["merge-shards", str(merged), *parts]), capsys.readouterr().err, "--overwrite")
    assert cli.main(["merge-shards", str(merged), *parts, "--overwrite"]) == 0
    assert read_manifest(merged) == manifest  # the parts keep their files, unchanged:
    assert {part: files(tmp_path / part) for part in ("p0", "p1")} == before
    # The training loader accepts the merged folder and reads every kept sample once.
    cfg = LoaderConfig(shards=str(merged), resolution=64, batch_size=1, num_workers=0, shuffle_buffer=0)
    texts = [t for batch in make_loader(cfg) for t in batch["text"]]
    assert sorted(texts) == sorted(WORDS)
    assert sorted(text for _, text, _ in read_samples(merged)) == sorted(WORDS)
    # ...and a stage trains on it (a few real steps of the tiny model, Lightning and all).
    final = train_stage(_stage("finetune-real", "tiny", merged, steps=2), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "complete.json").read_text())["step"] == 2 and final.is_file()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "glyphgen.cli", "make-shards", "real", *args]


def test_sigkill_then_resume_equals_an_uninterrupted_run(inputs, single, tmp_path):
    out = tmp_path / "killed"
    args = _cli("--webdataset", spec_of(inputs), "--out", str(out), "--resolution", "64", "--workers", "1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "shard-000000.tar"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "manifest.json").exists(), proc.stderr.read().decode()[-2000:]
    done = {name: data for name, data in files(out).items() if name.endswith(".tar")}
    stamps = {name: (out / name).stat().st_ino for name in done}

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resuming part 0/1" in again.stderr
    assert files(out) == files(single)  # every file, byte for byte
    assert {name: (out / name).stat().st_ino for name in done} == stamps  # finished shards not rewritten

    third = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "is finished" in third.stderr and files(out) == files(single)


def test_a_pipe_spec_typed_by_the_user_works(inputs, single, tmp_path):
    spec = f"pipe:cat {inputs}/{{00000..00003}}.tar"
    run(inputs, tmp_path / "piped", spec=spec)
    got = samples(tmp_path / "piped")
    assert {k: (png, t) for k, (png, t, _) in got.items()} == {
        k: (png, t) for k, (png, t, _) in samples(single).items()
    }


def test_a_manifest_naming_a_pipe_is_still_refused(single, tmp_path, capsys):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(single, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["name"] = f"pipe:cat {folder}/shard-000000.tar"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain .tar file name"):
        resolve_shards(str(folder))
    # merge-shards reads part manifests with the loader's rules too
    code = cli.main(["merge-shards", str(tmp_path / "m"), str(folder)])
    one_line_error(code, capsys.readouterr().err, "not a plain .tar file name")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("part", "fragment"),
    [("2/2", "index must be in [0, 1]"), ("1", "must be I/N"), ("a/b", "must be I/N"), ("0/0", "N >= 1")],
)
def test_a_bad_part_is_one_line(inputs, tmp_path, capsys, part, fragment):
    args = [
        "make-shards",
        "real",
        "--webdataset",
        spec_of(inputs),
        "--part",
        part,
        "--out",
        str(tmp_path / "o"),
    ]
    one_line_error(cli.main(args), capsys.readouterr().err, "part", fragment)
    assert not (tmp_path / "o").exists()


def test_part_without_webdataset_and_missing_input_are_one_line(inputs, tmp_path, capsys):
    code = cli.main(
        ["make-shards", "real", "--images", str(inputs), "--part", "0/2", "--out", str(tmp_path / "o")]
    )
    one_line_error(code, capsys.readouterr().err, "part", "--webdataset")
    code = cli.main(
        ["make-shards", "real", "--webdataset", f"{inputs}/{{0..1}}.tar", "--out", str(tmp_path / "o")]
    )
    one_line_error(code, capsys.readouterr().err, "no such tar file")


def test_merge_refuses_unfinished_duplicate_and_mismatched_parts(inputs, single, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "part.json").write_text("{}")
    code = cli.main(["merge-shards", str(tmp_path / "m"), str(single), str(unfinished)])
    one_line_error(code, capsys.readouterr().err, "unfinished part")
    code = cli.main(["merge-shards", str(tmp_path / "m"), str(single), str(single)])
    one_line_error(code, capsys.readouterr().err, "given twice")
    other = tmp_path / "other"
    cfg = RealConfig(webdataset=spec_of(inputs), part="1/2", out=str(other), resolution=32, workers=1)
    build_real(cfg)
    capsys.readouterr()
    code = cli.main(["merge-shards", str(tmp_path / "m"), str(single), str(other)])
    one_line_error(code, capsys.readouterr().err, "resolution 32 differs from", "64")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="unfinished part"):
        merge_parts(tmp_path / "m", [unfinished])


def test_an_unreadable_input_shard_leaves_the_part_unfinished(inputs, tmp_path, capsys):
    spec = f"pipe:cat {inputs}/00000.tar::pipe:cat {tmp_path}/missing.tar"
    args = ["make-shards", "real", "--webdataset", spec, "--out", str(tmp_path / "o"), "--workers", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(args)
    assert any("cannot read input shard" in str(w.message) for w in caught)
    one_line_error(code, capsys.readouterr().err, "cannot read input shard", "missing.tar", "again")
    assert len(list((tmp_path / "o").glob("shard-*.tar"))) == 1  # the readable one is done
    assert not (tmp_path / "o" / "manifest.json").exists()
