"""Stage-2 shards from img2dataset-style WebDataset tars, in parts that many machines run at once,
each resumable after being killed (docs/architecture.md, "Real-image shards (stage 2)").

Input: `KEY.jpg`/`KEY.png`/`KEY.webp` (the image), `KEY.txt` (a caption) and `KEY.json` (url, size,
...) members, grouped by key in tar order. The caption is kept in the sample's metadata as `caption`
and never used as the transcript: every image is read by the OCR through `RealBuilder.make_sample`,
the same per-image pipeline (limits, aspect check, OCR, fit, skips) as a folder of images.

Partitioning: the input spec is expanded (brace ranges, `::` lists) and sorted; part `I/N` takes
every N-th shard from position I, so N processes cover every input shard exactly once.

Output, per part folder: each input shard at position P of the sorted list becomes
`shard-PPPPPP.tar` (its kept samples, in input order, keys `PPPPPP_MMMMMM` from the position and the
sample's place in the shard) and `shard-PPPPPP.json` (its counts). Both are written to a temporary
name and renamed into place, the counts first, so a shard is complete when its tar exists; a part
that is killed and started again skips complete shards and never rewrites them. Sample bytes depend
on the input bytes and the settings alone (PNG encoding and tars with fixed times and owners), so a
resumed part ends byte-identical to an uninterrupted one. When every shard is complete the part's
`manifest.json` is written: the part folder is then a shard folder the loader reads, and a finished
part is skipped. `merge_parts` combines finished parts into one shard folder.

`pipe:` and URL specs run commands or reach the network: they are only ever taken from what the user
typed (the command line or their config), never from a manifest or any other data file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import sys
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import webdataset as wds

from glyphgen.data.real import (
    RealBuilder,
    RealConfig,
    RealTask,
    build_real_shards,
    parse_part,
)
from glyphgen.data.real_filters import Dedup, RealFilters
from glyphgen.data.real_report import REPORT_FILES, Progress, ReportStats, combine, write_report
from glyphgen.data.shards import (
    FORMAT,
    MANIFEST,
    MEMBERS,
    BuildReport,
    Sample,
    Skipped,
    read_manifest,
    resolve_workers,
    shard_members,
    tar_record,
)
from glyphgen.files import write_atomically

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
"""Image members of an img2dataset sample, in the order one is picked when a sample has several."""
MAX_MEMBER_BYTES = 1 << 26
"""A tar member bigger than this (64 MiB) is not read: its sample is skipped."""
MAX_CAPTION_CHARS = 4096
"""A caption longer than this is cut: it is metadata, not a transcript."""
PART_FILE = "part.json"
"""Written when a part starts: its input, part and settings, so a resume with others is refused."""
SHARD_FILE = re.compile(r"shard-(\d{6,})\.(tar|json)")
TMP_FILE = re.compile(r"shard-\d{6,}\.(tar|json)\.tmp")
REPORT_TMP = tuple(f"{name}.tmp" for name in REPORT_FILES)


def is_remote(url: str) -> bool:
    """A `pipe:` command or a URL with a scheme (not a local path)."""
    return url.startswith("pipe:") or "://" in url


def expand_spec(spec: str) -> list[str]:
    """The input shards a spec names (braces and `::` expanded), sorted, each once; local ones must
    exist. One-line errors."""
    urls = sorted(set(wds.shardlists.expand_urls(spec.strip())))
    if not urls:
        raise ValueError(f"--webdataset {spec!r} names no shards")
    missing = [u for u in urls if not is_remote(u) and not Path(u).expanduser().is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"--webdataset: no such tar file: {', '.join(missing[:3])}{more}")
    return urls


def select_part(urls: list[str], part: str) -> list[tuple[int, str]]:
    """(position, url) of the shards part `I/N` takes: every N-th of `urls` from position I."""
    index, count = parse_part(part)
    return [(pos, urls[pos]) for pos in range(index, len(urls), count)]


def _open(url: str):
    return wds.gopen(url if is_remote(url) else str(Path(url).expanduser()), "rb")


def read_input_shard(url: str) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {ext: bytes}) of each sample of an img2dataset tar, in tar order; members are grouped by
    the name before the first dot of their base name, as WebDataset does. A member over
    MAX_MEMBER_BYTES is not read (its value is None). Read errors propagate."""
    key, members = None, {}
    stream = _open(url)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                prefix = m.name[: len(m.name) - len(base)]
                stem, dot, ext = base.partition(".")
                if not dot or not stem:
                    continue
                name = prefix + stem
                if name != key and key is not None:
                    yield key, members
                    members = {}
                key = name
                small = m.size <= MAX_MEMBER_BYTES
                members[ext.lower()] = tar.extractfile(m).read() if small else None
        if key is not None:
            yield key, members
    finally:
        stream.close()  # a pipe: command that failed raises here


def _caption(data: bytes | None) -> str | None:
    if data is None:
        return None
    text = data.decode("utf-8", errors="replace").strip()
    return text[:MAX_CAPTION_CHARS]


def _url(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        return None
    url = info.get("url") if isinstance(info, dict) else None
    return url if isinstance(url, str) else None


def shard_tasks(pos: int, url: str) -> list[RealTask]:
    """One task per sample of the input shard at `pos` (read in full here, in the calling process)."""
    name = url.rsplit("/", 1)[-1]
    tasks = []
    for i, (key, members) in enumerate(read_input_shard(url)):
        source = f"{name}/{key}"
        extra = {"input_key": key}
        if (caption := _caption(members.get("txt"))) is not None:
            extra["caption"] = caption
        if (link := _url(members.get("json"))) is not None:
            extra["url"] = link
        out_key = f"{pos:06d}_{i:06d}"
        oversize = sorted(e for e, data in members.items() if data is None)
        if oversize:
            error = Skipped("member too large", f"{source}: {oversize[0]} is over {MAX_MEMBER_BYTES} bytes")
            tasks.append(RealTask(i, source=source, error=error, key=out_key))
            continue
        image = next((members[e] for e in IMAGE_MEMBERS if e in members), None)
        if image is None:
            error = Skipped("no image member", f"{source}: has {', '.join(sorted(members))}")
            tasks.append(RealTask(i, source=source, error=error, key=out_key))
            continue
        tasks.append(RealTask(i, source=source, data=image, key=out_key, extra=tuple(extra.items())))
    return tasks


def write_tar(path: Path, samples: list[Sample]) -> None:
    """A shard of `samples` whose bytes depend on the samples alone (fixed times and owners)."""
    with open(path, "wb") as f:
        writer = wds.TarWriter(f, mtime=0)
        for sample in samples:
            writer.write(tar_record(sample))
        writer.close()


def _atomic_write(path: Path, write) -> None:
    """`path` written under `NAME.tmp` (what a resume clears away), synced, then renamed."""
    write_atomically(path, write, tmp=path.with_name(path.name + ".tmp"), fsync=True)


def _settings(cfg: RealConfig) -> dict:
    """What decides the output bytes: everything but where it goes and how many processes make it."""
    values = dataclasses.asdict(cfg)
    for name in ("out", "workers", "images", "manifest"):
        values.pop(name, None)
    for f in dataclasses.fields(RealFilters):  # filters left off: parts started before they existed resume
        if values[f.name] == f.default:
            values.pop(f.name)
    values["ocr"].pop("threads", None)
    return json.loads(json.dumps(values, default=str))


class WebDatasetRealBuilder(RealBuilder):
    """A `RealBuilder` over WebDataset input, writing one output shard per input shard of its part.

    It keeps RealBuilder's `prepare` (OCR threads per worker), `setup` (one OCR engine per worker)
    and `make_sample` (the per-image pipeline), and ShardBuilder's worker functions, but replaces
    `build`: ShardBuilder writes one all-or-nothing folder through `ShardOutput`, which cannot resume,
    and opens a pool per build; here one pool serves every input shard of the part, and each output
    shard is finished on its own."""

    def build(self, overwrite: bool = False, preview: str | Path | None = None) -> BuildReport:
        cfg = self.cfg
        out = Path(os.path.abspath(cfg.out))
        part = "/".join(map(str, parse_part(cfg.part)))
        urls = expand_spec(cfg.webdataset)
        mine = select_part(urls, cfg.part)
        header = {
            "input": cfg.webdataset,
            "part": part,
            "input_shards": len(urls),
            "settings": _settings(cfg),
        }
        workers = resolve_workers(cfg.workers)
        skipped: Counter = Counter()
        start = time.perf_counter()
        with _part_folder(out, header, overwrite):
            if (out / MANIFEST).is_file():
                manifest = read_manifest(out)
                print(
                    f"{out}: part {part} is finished ({manifest['count']} samples); skipped", file=sys.stderr
                )
                return _report(out, manifest, 0.0, 0)
            pending = [(pos, url) for pos, url in mine if not _complete(out, pos)]
            if len(pending) < len(mine):
                done = len(mine) - len(pending)
                print(
                    f"{out}: resuming part {part}: {done} of {len(mine)} input shards done", file=sys.stderr
                )
            failed = []
            if pending:
                self.prepare(workers)
                todo = {pos for pos, _ in pending}
                finished = [pos for pos, _ in mine if pos not in todo]
                dedup = Dedup(_kept_hashes(out, finished) if cfg.drop_duplicates else None)
                progress = Progress(label=f"part {part}: ")
                with self.workers(workers) as run:
                    for pos, url in pending:
                        try:
                            tasks = shard_tasks(pos, url)
                        except Exception as e:  # noqa: BLE001 - any read failure leaves the shard to retry
                            failed.append(url)
                            warnings.warn(f"cannot read input shard {url}: {e}", stacklevel=2)
                            continue
                        kept, stats = [], ReportStats(seed=pos)
                        for result in map(dedup.check, run(tasks)):
                            stats.add(result, f"shard-{pos:06d}.tar")
                            progress.tick(result)
                            if isinstance(result, Skipped):
                                self.count_skip(result, skipped)  # the part's total, for warnings
                            else:
                                kept.append(result)
                        _finish_shard(out, pos, url, kept, stats)
            if failed:
                more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
                raise RuntimeError(
                    f"{out}: cannot read input shard {failed[0]}{more}; "
                    "run the same command again to retry (finished shards are kept)"
                )
            manifest = _write_part_manifest(out, header, mine)
        report = _report(out, manifest, time.perf_counter() - start, workers)
        print(report.summary(), file=sys.stderr)
        self.finish(preview)
        return report

    def finish(self, preview: str | Path | None) -> None:
        if read_manifest(self.cfg.out)["count"]:
            super().finish(preview)


def _report(out: Path, manifest: dict, seconds: float, workers: int) -> BuildReport:
    skipped = Counter(manifest.get("skipped", {}))
    return BuildReport(out, manifest["count"], skipped, seconds, workers, len(manifest["shards"]))


def _complete(out: Path, pos: int) -> bool:
    return (out / f"shard-{pos:06d}.tar").is_file() and (out / f"shard-{pos:06d}.json").is_file()


def _kept_hashes(out: Path, positions: list[int]) -> set[str]:
    """The `image_hash`es of the samples in the finished output shards at `positions` (a resumed part
    drops the duplicates of what it kept before it was stopped)."""
    seen = set()
    for pos in positions:
        for parts in shard_members(out / f"shard-{pos:06d}.tar", ["json"]).values():
            if digest := json.loads(parts["json"]).get("image_hash"):
                seen.add(digest)
    return seen


def _finish_shard(out: Path, pos: int, url: str, kept: list[Sample], stats: ReportStats) -> None:
    charset = "".join(sorted({c for s in kept for c in s.text}))
    info = {
        "input": url.rsplit("/", 1)[-1],
        "count": len(kept),
        "skipped": dict(sorted(stats.skipped.items())),
        "charset": charset,
        "report": stats.to_json(),
    }
    # The counts first: the tar appearing is what marks the shard complete.
    _atomic_write(
        out / f"shard-{pos:06d}.json", lambda p: p.write_text(json.dumps(info, sort_keys=True) + "\n")
    )
    _atomic_write(out / f"shard-{pos:06d}.tar", lambda p: write_tar(p, kept))


def _write_part_manifest(out: Path, header: dict, mine: list[tuple[int, str]]) -> dict:
    shards, skipped, charset, count, reports = [], Counter(), set(), 0, []
    for pos, _ in mine:
        info = json.loads((out / f"shard-{pos:06d}.json").read_text())
        reports.append(info.get("report") or {"kept": info["count"], "skipped": info["skipped"]})
        skipped.update(info["skipped"])
        charset.update(info["charset"])
        count += info["count"]
        if info["count"]:  # a shard whose every sample was skipped is kept as done, not listed
            shards.append({"name": f"shard-{pos:06d}.tar", "count": info["count"]})
    manifest = {
        "format": FORMAT,
        "kind": "real",
        "resolution": header["settings"]["resolution"],
        "count": count,
        "shards": shards,
        "members": MEMBERS,
        "charset": "".join(sorted(charset)),
        "skipped": dict(sorted(skipped.items())),
        "source": header["input"],
        "part": header["part"],
        "input_shards": header["input_shards"],
    }
    # The report before the manifest: a finished part always has one.
    write_report(out, combine(reports, part=header["part"], source=header["input"]))
    _atomic_write(
        out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    )
    return manifest


@contextmanager
def _part_folder(out: Path, header: dict, overwrite: bool):
    """Own `out` for this part: new, or one this part started (same input, part and settings), locked
    against a second process; `overwrite` first removes what a part wrote there, and nothing else."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in out.iterdir() if not _ours(p.name)]
    if foreign:
        raise FileExistsError(
            f"{out}: holds files that a part does not write ({', '.join(sorted(foreign)[:3])}); "
            "choose another --out"
        )
    lock = open(out / ".lock", "a")  # noqa: SIM115 - held for the whole build
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"{out}: another process is writing this part") from None
        if overwrite:
            for p in out.iterdir():
                if p.name != ".lock":
                    p.unlink()
        for p in out.iterdir():
            if TMP_FILE.fullmatch(p.name) or p.name in REPORT_TMP:
                p.unlink()  # left by a killed run: never complete (a report is written again)
        path = out / PART_FILE
        if path.exists():
            try:
                before = json.loads(path.read_text())
            except ValueError:
                before = None
            if before != header:
                raise FileExistsError(
                    f"{out}: holds a part started with other input, part or settings; "
                    "choose another --out (or pass --overwrite to start it again)"
                )
        else:
            if any(SHARD_FILE.fullmatch(p.name) for p in out.iterdir()):
                raise FileExistsError(f"{out}: holds shards but no {PART_FILE}; choose another --out")
            _atomic_write(path, lambda p: p.write_text(json.dumps(header, sort_keys=True) + "\n"))
        yield
    finally:
        lock.close()


def _ours(name: str) -> bool:
    return name in (MANIFEST, PART_FILE, ".lock") or bool(
        SHARD_FILE.fullmatch(name) or TMP_FILE.fullmatch(name) or name in REPORT_FILES + REPORT_TMP
    )


def build_real(cfg: RealConfig, overwrite: bool = False, preview: str | Path | None = None) -> BuildReport:
    """Real-image shards from any input (`glyphgen make-shards real`): part `cfg.part` of the
    WebDataset shards `cfg.webdataset`, resumable, or a folder of images or a JSONL manifest."""
    if cfg.webdataset is None:
        return build_real_shards(cfg, overwrite, preview)
    return WebDatasetRealBuilder(cfg).build(overwrite, preview)
