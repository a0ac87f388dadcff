"""Which shard files a spec names (a folder's checked manifest, a URL pattern, one tar), and how
the loader reports data it cannot use: the counted skip and the error for no data at all."""

from __future__ import annotations

import math
import reprlib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from glyphgen.data.shards import MANIFEST, read_manifest


class NoDataError(RuntimeError):
    """No sample is left to read: every shard is empty, missing or corrupt."""


class SkipCounter:
    """Error handler for WebDataset stages and decoding: counts the skip by exception type, warns
    about the first ten and then every power of ten (naming the shard when known), keeps going."""

    def __init__(self):
        self.counts: Counter = Counter()

    def __call__(self, exn: Exception) -> bool:
        self.counts[type(exn).__name__] += 1
        total = sum(self.counts.values())
        if total <= 10 or math.log10(total).is_integer():
            warnings.warn(f"skipped corrupt data ({total} so far in this stream): {exn}", stacklevel=2)
        return True


def shard_names(urls: list[str], shown: int = 4) -> str:
    """The last path part of each shard, the first `shown` of them: for one-line messages."""
    names = [u.rsplit("/", 1)[-1] for u in urls]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass
class Shards:
    """What a shard spec resolves to: the URLs to read, the manifest's per-shard sample counts (a
    folder) or None (a URL pattern), and the manifest's shards skipped as empty."""

    urls: list[str]
    counts: list[int] | None
    empty: list[str]


_SHOW = reprlib.Repr()
_SHOW.maxstring = 60  # a manifest value in an error line: enough to recognise, never a page


def _shard_entry(entry: object, where: str) -> tuple[str, int]:
    """(name, count) of one manifest entry. The name must be a plain file name inside the folder: no
    separator (a path elsewhere), no colon (a URL scheme or a `pipe:` command), printable, `.tar`."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with a name and a count, got {_SHOW.repr(entry)}")
    for key in ("name", "count"):
        if key not in entry:
            raise ValueError(f"{where} lacks {key!r}")
    name, count = entry["name"], entry["count"]
    if not isinstance(name, str):
        raise ValueError(f"{where}.name must be a string, got {_SHOW.repr(name)}")
    if not (name.isprintable() and name.endswith(".tar") and len(name) > 4 and not set(name) & set("/\\:")):
        raise ValueError(f"{where}.name {_SHOW.repr(name)} is not a plain .tar file name inside the folder")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"{where}.count must be a whole number >= 0, got {_SHOW.repr(count)}")
    return name, count


def _is_empty_tar(path: Path) -> bool:
    """0 bytes, or a first header block of zeros (a tar's end-of-archive marker): no member at all."""
    with path.open("rb") as f:
        return not f.read(512).strip(b"\0")


def _folder_shards(folder: Path) -> Shards:
    manifest = read_manifest(folder)
    where = folder / MANIFEST
    urls, counts, empty = [], [], []
    for i, entry in enumerate(manifest["shards"]):
        name, count = _shard_entry(entry, f"{where}: shards[{i}]")
        # Absolute, so that nothing in the folder's own path is ever read as a URL scheme either.
        path = folder.absolute() / name
        if not path.exists():
            raise FileNotFoundError(f"{where}: lists {name}, which is not in the folder")
        if not path.is_file():
            raise ValueError(f"{where}: {name} is not a regular file")
        if _is_empty_tar(path):
            empty.append(name)
            continue
        urls.append(str(path))
        counts.append(count)
    if not urls:
        what = f"all {len(empty)} shards are empty ({shard_names(empty)})" if empty else "it lists no shards"
        raise NoDataError(f"{where}: no samples to read: {what}")
    if empty:
        warnings.warn(f"{folder}: skipped {len(empty)} empty shard(s): {shard_names(empty)}", stacklevel=3)
    return Shards(urls, counts, empty)


def resolve_shards(spec: str) -> Shards:
    """The shards a spec names: a folder (its manifest's shards, checked), a URL pattern, or one tar."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return _folder_shards(folder)
    if "://" in spec or spec.startswith("pipe:") or "{" in spec:
        return Shards(list(wds.shardlists.expand_urls(spec)), None, [])
    if folder.suffix == ".tar" and folder.is_file():
        return Shards([str(folder.absolute())], None, [])
    raise FileNotFoundError(f"{spec}: no such shard folder (build it with `glyphgen make-shards`)")
