"""Bad-input corpus rows: loader and check-shards (see bad_input.py).

A shard folder is data: its manifest may only name `.tar` files inside it, and every listed shard is
checked before anything is read. Empty shards are counted skips; data that yields nothing ends with one
line (never a hang); check-shards reports what it really read, once."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from bad_input import Case
from conftest import write_shards


def _folder(root: Path, n: int = 8, maxcount: int = 4, name: str = "s") -> Path:
    write_shards(root / name, n, maxcount=maxcount)
    return root / name


def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


def _check(folder: str, *overrides: str) -> list[str]:
    return ["check-shards", folder, "num_workers=0", "resolution=32", *overrides]


def _manifest_name(name: str):
    """A shard folder in the working directory itself (`check-shards .`) whose manifest names `name`."""

    def setup(root: Path) -> list[str]:
        built = _folder(root / "build", n=4)
        for path in built.iterdir():
            shutil.move(path, root / path.name)
        (root / "outside.tar").write_bytes((root / "shard-000000.tar").read_bytes())

        def rename(manifest):
            manifest["shards"][0]["name"] = name
            return manifest

        _edit_manifest(root, rename)
        return _check(".")

    return setup


def _nothing_ran(root: Path) -> None:
    assert not (root / "PWNED").exists()


def _manifest(change):
    def setup(root: Path) -> list[str]:
        _edit_manifest(_folder(root), change)
        return _check("s")

    return setup


def _entry(entry):
    def change(manifest):
        manifest["shards"][0] = entry
        return manifest

    return _manifest(change)


def _missing_shard(root: Path) -> list[str]:
    (_folder(root) / "shard-000001.tar").unlink()
    return _check("s")


def _empty_tar(root: Path) -> list[str]:
    tarfile.open(_folder(root) / "shard-000001.tar", "w").close()
    return _check("s")


def _zero_byte_tar(root: Path) -> list[str]:
    (_folder(root) / "shard-000001.tar").write_bytes(b"")
    return _check("s")


def _all_empty(root: Path) -> list[str]:
    folder = _folder(root)
    for shard in folder.glob("*.tar"):
        shard.write_bytes(b"")
    return _check("s")


def _break(shard: Path, names=None) -> None:
    """Make the images of `names` (default: every image) in `shard` undecodable."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.endswith(".png") and (names is None or m.name in names):
                data = b"junk"
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))


def _broken_samples(root: Path) -> list[str]:
    for shard in _folder(root).glob("*.tar"):
        _break(shard)
    return _check("s")


def _manifest_overcounts(root: Path) -> list[str]:
    folder = _folder(root, n=8, maxcount=8)

    def overcount(manifest):
        manifest["shards"][0]["count"] = 80
        return manifest

    _edit_manifest(folder, overcount)
    return ["check-shards", "s", "batch_size=64", "num_workers=0", "resolution=32"]  # the README form


def _truncated(root: Path) -> list[str]:
    shard = _folder(root, n=8, maxcount=8) / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:6000])
    return _check("s")


def _skips_in_workers(root: Path) -> list[str]:
    folder = _folder(root)
    _break(folder / "shard-000000.tar", {"k00001.png"})
    _break(folder / "shard-000001.tar", {"k00005.png"})
    return ["check-shards", "s", "num_workers=2", "resolution=32"]


CASES: list[Case] = [
    Case(
        "loader-manifest-name-pipe-command",
        _manifest_name("pipe:touch PWNED"),
        "error",
        ("manifest.json: shards[0].name 'pipe:touch PWNED' is not a plain .tar file name",),
        _nothing_ran,
    ),
    Case(
        "loader-manifest-name-absolute", _manifest_name("/dev/zero"), "error", ("'/dev/zero' is not a plain",)
    ),
    Case("loader-manifest-name-dotdot", _manifest_name("../outside.tar"), "error", ("'../outside.tar'",)),
    Case("loader-manifest-name-url", _manifest_name("http://example.com/a.tar"), "error", ("'http://",)),
    Case("loader-manifest-is-a-list", _manifest(lambda m: [m]), "error", ("manifest.json",)),
    Case("loader-manifest-entry-lacks-name", _entry({"count": 4}), "error", ("shards[0] lacks 'name'",)),
    Case(
        "loader-manifest-name-not-a-string",
        _entry({"name": 7, "count": 4}),
        "error",
        ("manifest.json: shards[0].name must be a string, got 7",),
    ),
    Case("loader-manifest-entry-not-an-object", _entry("shard-000000.tar"), "error", ("shards[0] must be",)),
    Case(
        "loader-missing-shard",
        _missing_shard,
        "error",
        ("manifest.json: lists shard-000001.tar, which is not in the folder",),
    ),
    Case("loader-empty-tar", _empty_tar, "skip", ("skipped 1 empty shard(s): shard-000001.tar",)),
    Case("loader-zero-byte-tar", _zero_byte_tar, "skip", ("skipped 1 empty shard(s): shard-000001.tar",)),
    Case("loader-all-shards-empty", _all_empty, "error", ("all 2 shards are empty",)),
    Case(
        "loader-broken-samples",
        _broken_samples,
        "error",
        ("no readable sample in its 2 shards (shard-000000.tar, shard-000001.tar)",),
    ),
    Case(
        "check-shards-counts-what-the-shards-hold",
        _manifest_overcounts,
        "skip",
        ("the manifest lists 80 samples, the shards hold 8",),
    ),
    Case(
        "check-shards-truncated-tar",
        _truncated,
        "skip",
        ("the manifest lists 8 samples, the shards hold", "skipped 1 "),
    ),
    Case("check-shards-skips-in-workers", _skips_in_workers, "skip", ("skipped 2 UnidentifiedImageError",)),
]
