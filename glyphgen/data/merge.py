"""`glyphgen merge-shards OUT PART_DIR...`: the finished parts of a WebDataset transcription
(`make-shards real --webdataset ... --part I/N`, see real_wds.py) as one shard folder the training
loader reads: the parts' shards hard-linked (else copied) into OUT, with one manifest, and a report
(glyphgen/data/real_report.py) combined from the parts' reports.

A part built with `drop_duplicates` keeps each image once within itself; the merge (by default)
does the same across parts: walking the parts in index order, a sample whose json `image_hash`
was already seen is dropped. That reads every json member, but only a shard that holds such a
sample is rewritten (a new file, without it); the others are still linked as they are."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import warnings
from collections import Counter
from pathlib import Path

from glyphgen.data.real import parse_part, transcript_summary
from glyphgen.data.real_report import clear_old_report, combine, discount, read_report, write_report
from glyphgen.data.shards import (
    FORMAT,
    MANIFEST,
    MEMBERS,
    check_output_folder,
    read_manifest,
    remove_stale_partials,
    shard_members,
)
from glyphgen.files import replace_folder

DUPLICATE = "duplicate image"
"""The skip reason of a dropped duplicate: the one `real_filters.Dedup` counts within a part."""


def merge_parts(
    out: str | Path, parts: list[str | Path], overwrite: bool = False, drop_duplicates: bool = True
) -> dict:
    """One shard folder at `out` holding the shards of finished part folders (hard links where the
    file system allows, else copies), with a manifest of the combined counts. With
    `drop_duplicates`, a sample whose `image_hash` an earlier part (or earlier in its own part)
    already holds is left out, and its shard written anew without it. Refuses, in one line,
    an unfinished part, the same part twice, and parts of another resolution, part count or input
    shard count; a different input spec (another mount of the same shards) is only warned about.
    `out` must be new or empty, or with `overwrite` a shard folder glyphgen wrote."""
    from glyphgen.data.shard_list import resolve_shards

    out = Path(os.path.abspath(out))
    if not parts:
        raise ValueError("merge-shards needs at least one part folder")
    seen: dict[str, Path] = {}
    manifests = []
    for folder in map(Path, parts):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such part folder")
        if not (folder / MANIFEST).is_file():
            raise ValueError(f"{folder}: unfinished part (no {MANIFEST}); run its make-shards again first")
        manifest = read_manifest(folder)
        label = manifest.get("part")
        if not isinstance(label, str) or manifest.get("kind") != "real":
            raise ValueError(f"{folder}: not a part folder of `make-shards real --webdataset`")
        index, count = parse_part(label)
        if label in seen or folder.resolve() in {p.resolve() for p in seen.values()}:
            raise ValueError(f"{folder}: part {label} is given twice (also {seen.get(label, folder)})")
        seen[label] = folder
        manifests.append((folder, manifest, count))
    first_folder, first, first_count = manifests[0]
    for folder, manifest, count in manifests[1:]:
        if manifest.get("source") != first.get("source"):
            warnings.warn(
                f"{folder}: input {manifest.get('source')!r}, not {first.get('source')!r}", stacklevel=2
            )
        for key in ("resolution", "input_shards"):
            if manifest.get(key) != first.get(key):
                raise ValueError(
                    f"{folder}: {key} {manifest.get(key)!r} differs from {first_folder}'s {first.get(key)!r}"
                )
        if count != first_count:
            raise ValueError(f"{folder}: part of {count} parts, {first_folder} of {first_count}")
    missing = sorted(set(range(first_count)) - {parse_part(label)[0] for label in seen})
    if missing:
        warnings.warn(f"merging {len(seen)} of {first_count} parts; missing: {missing}", stacklevel=2)
    # Part-index order, whatever the command line's: which copy of a duplicate stays is then fixed.
    manifests.sort(key=lambda m: parse_part(m[1]["part"])[0])
    clear_old_report(out, overwrite)
    check_output_folder(out, overwrite)
    for stale in remove_stale_partials(out):
        warnings.warn(f"removed {stale.name}, left by a merge that was killed", stacklevel=2)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        entries, skipped, charset = [], Counter(), set()
        hashes: set[str] = set()
        dropped: list[tuple[str, str, str, dict]] = []
        for folder, manifest, _ in manifests:
            skipped.update(manifest.get("skipped", {}))
            charset.update(manifest.get("charset", ""))
            if not manifest["count"]:
                continue
            # The loader's own check: plain .tar names inside the folder, present, counted.
            shards = resolve_shards(str(folder))
            names = [Path(u).name for u in shards.urls]
            for src, name, n in zip(shards.urls, names, shards.counts, strict=True):
                if (tmp / name).exists():
                    raise ValueError(f"{folder}: shard {name} is also in another part")
                gone = _drop_seen(Path(src), tmp / name, hashes) if drop_duplicates else []
                if not gone:
                    _link_or_copy(Path(src), tmp / name)
                dropped += [(name, *sample) for sample in gone]
                if not gone or (tmp / name).exists():  # a shard left empty is not written
                    entries.append({"name": name, "count": n - len(gone)})
        if dropped:
            skipped[DUPLICATE] += len(dropped)
        entries.sort(key=lambda e: e["name"])
        if not entries:
            raise ValueError(f"{out}: the parts hold no samples, so there is nothing to merge")
        merged = {
            "format": FORMAT,
            "kind": "real",
            "resolution": first["resolution"],
            "count": sum(e["count"] for e in entries),
            "shards": entries,
            "members": MEMBERS,
            "charset": "".join(sorted(charset)),
            "skipped": dict(sorted(skipped.items())),
            "source": first.get("source"),
            "input_shards": first.get("input_shards"),
            "parts": sorted(seen, key=lambda label: parse_part(label)[0]),
        }
        (tmp / MANIFEST).write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        # The old folder holds links to the parts' files: removing it leaves the parts theirs.
        replace_folder(tmp, out, lambda: check_output_folder(out, overwrite))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reports = [
        read_report(folder) or {"kept": manifest["count"], "skipped": manifest.get("skipped", {})}
        for folder, manifest, _ in manifests
    ]
    report = combine(reports, parts=merged["parts"], source=merged["source"])
    write_report(out, discount(report, dropped, DUPLICATE))
    if dropped:
        print(f"merge: dropped {len(dropped)} duplicate images found in more than one part", file=sys.stderr)
    print(transcript_summary(out), file=sys.stderr)
    return merged


def _drop_seen(src: Path, dst: Path, hashes: set[str]) -> list[tuple[str, str, dict]]:
    """The samples of shard `src` whose `image_hash` is in `hashes` (key, transcript, json), in tar
    order; the others' hashes join `hashes`. When there are any, `dst` (a new file) gets the rest of
    the shard, each member's header and bytes as they were, so equal inputs give equal bytes; no
    file at all when nothing is left. Samples without a hash are always kept."""
    try:
        return _copy_unseen(src, dst, hashes)
    except tarfile.TarError as e:  # a part's shard damaged since it was written
        raise ValueError(f"{src}: unreadable shard ({e}); build its part again") from None


def _copy_unseen(src: Path, dst: Path, hashes: set[str]) -> list[tuple[str, str, dict]]:
    samples = shard_members(src, ["json", "txt"])
    gone = []
    for key, parts in samples.items():
        try:
            meta = json.loads(parts.get("json", b"{}"))
        except ValueError as e:
            raise ValueError(f"{src}: sample {key}: unreadable json member ({e})") from None
        digest = meta.get("image_hash") if isinstance(meta, dict) else None
        if digest in hashes:
            gone.append((key, parts.get("txt", b"").decode("utf-8"), meta))
        elif digest is not None:
            hashes.add(digest)
    if gone and len(gone) < len(samples):
        dropped = {key for key, _, _ in gone}
        # "x": a new file, never a write through a hard link into a part's shard.
        with tarfile.open(src) as tar, tarfile.open(dst, "x") as new:
            for m in tar.getmembers():
                if m.name.partition(".")[0] not in dropped:
                    new.addfile(m, tar.extractfile(m) if m.isfile() else None)
    return gone


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
