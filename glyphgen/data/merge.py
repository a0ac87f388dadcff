"""`glyphgen merge-shards OUT PART_DIR...`: the finished parts of a WebDataset transcription
(`make-shards real --webdataset ... --part I/N`, see real_wds.py) as one shard folder the training
loader reads: the parts' shards hard-linked (else copied) into OUT, with one manifest, and a report
(glyphgen/data/real_report.py) combined from the parts' reports. Duplicate images across parts are not
dropped: that would mean reading every sample's json and rewriting the shards holding one, where a
merge now only links files; `drop_duplicates` works within each part."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from collections import Counter
from pathlib import Path

from glyphgen.data.real import parse_part, transcript_summary
from glyphgen.data.real_report import clear_old_report, combine, read_report, write_report
from glyphgen.data.shards import (
    FORMAT,
    MANIFEST,
    MEMBERS,
    check_output_folder,
    read_manifest,
    remove_stale_partials,
)


def merge_parts(out: str | Path, parts: list[str | Path], overwrite: bool = False) -> dict:
    """One shard folder at `out` holding the shards of finished part folders (hard links where the
    file system allows, else copies), with a manifest of the combined counts. Refuses, in one line,
    an unfinished part, the same part twice, and parts of another resolution, part count or input
    shard count; a different input spec (another mount of the same shards) is only warned about.
    `out` must be new or empty, or with `overwrite` a shard folder glyphgen wrote."""
    from glyphgen.data.loader import resolve_shards

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
    clear_old_report(out, overwrite)
    check_output_folder(out, overwrite)
    for stale in remove_stale_partials(out):
        warnings.warn(f"removed {stale.name}, left by a merge that was killed", stacklevel=2)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        entries, skipped, charset = [], Counter(), set()
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
                _link_or_copy(Path(src), tmp / name)
                entries.append({"name": name, "count": n})
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
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        if out.exists():
            check_output_folder(out, overwrite)  # again: it may have changed since
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)  # links to the parts' files: the parts keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reports = [
        read_report(folder) or {"kept": manifest["count"], "skipped": manifest.get("skipped", {})}
        for folder, manifest, _ in manifests
    ]
    write_report(out, combine(reports, parts=merged["parts"], source=merged["source"]))
    print(transcript_summary(out), file=sys.stderr)
    return merged


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
