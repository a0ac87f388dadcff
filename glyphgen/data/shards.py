"""Writing WebDataset shards: a safe output folder, parallel sample builders, and the manifest.

A shard folder holds `shard-000000.tar, ...` (written by webdataset's `ShardWriter`, `maxcount`
samples each) and a `manifest.json`. Each sample has the members `png` (the image), `txt` (the
transcript, exactly as drawn or read) and `json` (metadata).

Output is all-or-nothing: shards are written into a sibling `NAME.partial-PID` folder and moved into
place only once complete, so an interrupted build never leaves half a data set (and the next build
removes what a killed one left). The output folder may be new or empty; a shard folder glyphgen wrote
is replaced (never mixed with new shards) only when the caller asked to overwrite it; any other
folder is refused, `--overwrite` or not: glyphgen never deletes a file it did not write.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import webdataset as wds

from glyphgen.config import require
from glyphgen.files import replace_folder

MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"
RESOLUTIONS = (32, 64, 128, 256)
"""Image sides the shard builders write."""
MAX_WORKERS = 256
"""Most worker processes a build may start: a typo must not fork thousands."""


@dataclass
class ShardBuildConfig:
    """The settings every kind of shard build has. Each builder's config subclasses it, redeclares
    `out` with its own default folder, and calls `super().__post_init__()` from its own."""

    out: str
    """Folder the shards and manifest.json are written to."""
    resolution: int = 64
    """Image side in pixels: one of 32, 64, 128, 256."""
    shard_size: int = 10_000
    """Samples per tar shard (webdataset maxcount)."""
    workers: int = 0
    """Worker processes; 0 means one per CPU core."""

    def __post_init__(self):
        sides = ", ".join(map(str, RESOLUTIONS))
        res, size, workers = self.resolution, self.shard_size, self.workers
        require(res in RESOLUTIONS, "resolution", f"must be one of {sides}, got {res}")
        require(size >= 1, "shard_size", f"must be >= 1, got {size}")
        require(0 <= workers <= MAX_WORKERS, "workers", f"must be in [0, {MAX_WORKERS}], got {workers}")


FORMAT = "glyphgen-shards/1"


class ShardsExistError(FileExistsError):
    """The output folder already holds shards and overwriting was not asked for."""


@dataclass(frozen=True)
class Sample:
    """One training example as stored: a PNG image, its transcript and metadata."""

    key: str
    png: bytes
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """A counted skip: `reason` is a short category (e.g. "truncated image"), `detail` names the input."""

    reason: str
    detail: str = ""


@dataclass
class BuildReport:
    """What a shard build did: samples written, skips by reason, wall time and throughput."""

    out: Path
    count: int
    skipped: Counter
    seconds: float
    workers: int
    shards: int

    @property
    def images_per_s(self) -> float:
        return self.count / max(self.seconds, 1e-9)

    @property
    def images_per_s_per_worker(self) -> float:
        return self.images_per_s / max(self.workers, 1)

    def summary(self) -> str:
        skips = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        return (
            f"wrote {self.count} samples in {self.shards} shards to {self.out} in {self.seconds:.1f}s: "
            f"{self.images_per_s:.0f} images/s ({self.images_per_s_per_worker:.0f} per worker x "
            f"{self.workers}); skipped: {skips}"
        )


SHARD_NAME = re.compile(r"shard-\d{6}\.tar")


def foreign_entries(folder: Path) -> list[str]:
    """Names in `folder` that a shard build does not write (anything but shards and the manifest)."""
    return sorted(
        p.name for p in folder.iterdir() if not (p.name == MANIFEST or SHARD_NAME.fullmatch(p.name))
    )


def _is_live(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: another user's process, alive too
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the `NAME.partial-PID` / `NAME.old-PID` folders that killed builds of `out` left, where
    PID is no longer running and the folder holds only what a build writes."""
    removed = []
    for path in out.parent.glob(f"{glob.escape(out.name)}.*-*"):
        kind, _, pid = path.name[len(out.name) + 1 :].partition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or not path.is_dir() or path.is_symlink():
            continue
        # Our own PID's name can only be left over from an earlier process that had the same PID.
        if (int(pid) == os.getpid() or not _is_live(int(pid))) and not foreign_entries(path):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder a build may not replace: a file, a folder holding anything a shard
    build did not write, or a shard folder when `overwrite` was not asked for. New or empty is fine."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ShardsExistError(f"{out}: exists and is not a folder; choose another --out")
    if not out.exists():
        return
    foreign = foreign_entries(out)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ShardsExistError(
            f"{out}: holds files that are not glyphgen shards ({', '.join(foreign[:3])}{more}); "
            "glyphgen only replaces its own shard folders: choose another --out"
        )
    if any(out.iterdir()) and not overwrite:
        raise ShardsExistError(f"{out}: already holds shards; pass --overwrite to replace them")


MEMBERS = ["png", "txt", "json"]
"""The members of every sample glyphgen writes, in the manifest's `members`."""


def shard_members(shard: str | Path, exts: Iterable[str]) -> dict[str, dict[str, bytes]]:
    """{sample key: {ext: bytes}} of one glyphgen shard, in tar order, holding only the members named
    by `exts`; the others are skipped over without being read."""
    wanted, samples = set(exts), {}
    with tarfile.open(shard) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            if ext in wanted:
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def tar_record(sample: Sample) -> dict:
    """`sample` as the WebDataset record every glyphgen shard holds (keys sorted in the json, so
    the bytes depend on the sample alone)."""
    if "." in sample.key:
        raise ValueError(f"sample key {sample.key!r} contains a dot (WebDataset splits on dots)")
    meta = json.dumps(sample.meta, sort_keys=True).encode()
    return {"__key__": sample.key, "png": sample.png, "txt": sample.text.encode("utf-8"), "json": meta}


class ShardOutput:
    """Context manager owning an output folder while shards are written into it.

    >>> with ShardOutput(out, maxcount=1000, overwrite=False, manifest_extra={"kind": "synthetic"}) as o:
    ...     o.write(sample)
    """

    def __init__(self, out: str | Path, *, maxcount: int, overwrite: bool = False, manifest_extra=None):
        # Absolute, so that "." or "x/.." name a real folder with a real name.
        self.out = Path(os.path.abspath(out))
        self.maxcount = maxcount
        self.overwrite = overwrite
        self.manifest_extra = dict(manifest_extra or {})
        self.count = 0
        self.charset: set[str] = set()
        self._tmp = self.out.with_name(f"{self.out.name}.partial-{os.getpid()}")
        self._writer: wds.ShardWriter | None = None
        self._counts: Counter = Counter()

    def __enter__(self) -> ShardOutput:
        check_output_folder(self.out, self.overwrite)
        for stale in remove_stale_partials(self.out):
            warnings.warn(f"removed {stale.name}, left by a build that was killed", stacklevel=2)
        self._tmp.mkdir(parents=True)
        # mtime=0 and fixed owner names make the tar bytes a function of the samples alone.
        self._writer = wds.ShardWriter(
            str(self._tmp / SHARD_PATTERN), maxcount=self.maxcount, maxsize=1 << 40, verbose=0, mtime=0
        )
        return self

    def write(self, sample: Sample) -> None:
        self._writer.write(tar_record(sample))
        self.count += 1
        self.charset.update(sample.text)
        self._counts[Path(self._writer.fname).name] += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        if self.count == 0:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise ValueError(f"{self.out}: no samples were written, so no shards were made")
        try:
            self._write_manifest()
            self._swap_into_place()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def _write_manifest(self) -> None:
        manifest = {
            "format": FORMAT,
            "count": self.count,
            "shards": [{"name": n, "count": c} for n, c in sorted(self._counts.items())],
            "members": MEMBERS,
            "charset": "".join(sorted(self.charset)),
            **self.manifest_extra,
        }
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    def _swap_into_place(self) -> None:
        replace_folder(self._tmp, self.out, lambda: check_output_folder(self.out, self.overwrite))


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a shard folder; a one-line error when missing or unreadable."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no shard manifest (build the shards first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: manifest is not valid JSON ({e})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a shard manifest") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a glyphgen shard manifest (a JSON {type(manifest).__name__})")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path}: not a glyphgen shard manifest (format {manifest.get('format')!r})")
    return manifest


# -- builders ----------------------------------------------------------------------------------------


def resolve_workers(workers: int) -> int:
    """0 means one worker per CPU core available to this process."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class ShardBuilder:
    """One kind of shard build: a subclass says what each sample is, this class writes the shards.

    `build` lists the `tasks()` and picks the worker count in the calling process, calls `prepare`
    there (state that every worker shares, such as the discovered fonts), then runs
    `make_sample(task)` for every task on the worker processes, keeping task order, so the output
    depends on the tasks alone. Each worker process first calls `setup()` once: heavy per-process
    state (a renderer, an OCR engine) becomes attributes of the builder there. Workers get a copy of
    the builder (forked, or pickled where fork does not exist), so it must stay picklable until
    `setup` has run. A `Skipped` result is counted and warned about, never fatal. The manifest holds
    `kind`, `resolution`, the skips by reason and `manifest_extra()`."""

    kind: ClassVar[str] = ""
    """The manifest's `kind`: what the samples are ("synthetic", "real")."""
    chunksize: ClassVar[int] = 16
    """Tasks handed to a worker at a time: small when samples are slow and uneven (OCR)."""
    max_warnings: ClassVar[int] = 20
    """Skips warned about one by one; the rest are only counted."""

    def __init__(self, cfg: ShardBuildConfig):
        self.cfg = cfg

    def tasks(self) -> Iterable:
        """What `make_sample` is called with, in output order."""
        raise NotImplementedError

    def prepare(self, workers: int) -> None:
        """Once, in the building process, before any worker starts."""

    def setup(self) -> None:
        """Once per worker process, before its first task."""

    def make_sample(self, task: Any) -> Sample | Skipped:
        raise NotImplementedError

    def manifest_extra(self) -> dict[str, Any]:
        """Manifest entries of this kind of build, beside `kind` and `resolution`."""
        return {}

    def finish(self, preview: str | Path | None) -> None:
        """Once the shards are in place: summaries and, when `preview` is given, a grid PNG there."""

    def worker_count(self, tasks: Iterable) -> int:
        """`cfg.workers` resolved, and never more than there are tasks."""
        workers = resolve_workers(self.cfg.workers)
        return min(workers, max(1, len(tasks))) if isinstance(tasks, Sized) else workers

    @contextmanager
    def workers(self, count: int) -> Iterator[Callable[[Iterable], Iterator[Sample | Skipped]]]:
        """Within the block, `run(tasks)` gives `make_sample` of every task, in task order, on
        `count` worker processes that live as long as the block (one: this process)."""
        if count <= 1:
            self.setup()
            yield lambda tasks: map(self.make_sample, tasks)
            return
        # fork is fastest and keeps module state; spawn where fork does not exist.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(count, initializer=start_worker, initargs=(self,)) as pool:
            yield lambda tasks: pool.imap(run_in_worker, tasks, chunksize=self.chunksize)

    def results(self, tasks: Iterable, workers: int) -> Iterator[Sample | Skipped]:
        """`make_sample` of every task, in task order, on `workers` processes (one: this one)."""
        with self.workers(workers) as run:
            yield from run(tasks)

    def count_skip(self, skip: Skipped, skipped: Counter) -> None:
        """Count `skip` under its reason in `skipped`; warn about the first `max_warnings` skips."""
        skipped[skip.reason] += 1
        if sum(skipped.values()) <= self.max_warnings:
            warnings.warn(f"skipped ({skip.reason}): {skip.detail}", stacklevel=3)

    def build(self, overwrite: bool = False, preview: str | Path | None = None) -> BuildReport:
        """Write every task's sample as shards to `cfg.out`; then `finish(preview)`."""
        cfg = self.cfg
        tasks = self.tasks()
        workers = self.worker_count(tasks)
        self.prepare(workers)
        manifest = {"kind": self.kind, "resolution": cfg.resolution, **self.manifest_extra()}
        skipped: Counter = Counter()
        start = time.perf_counter()
        with ShardOutput(
            cfg.out, maxcount=cfg.shard_size, overwrite=overwrite, manifest_extra=manifest
        ) as sink:
            for result in self.results(tasks, workers):
                if isinstance(result, Skipped):
                    self.count_skip(result, skipped)
                else:
                    sink.write(result)
            sink.manifest_extra["skipped"] = dict(sorted(skipped.items()))  # written as the block ends
        seconds = time.perf_counter() - start
        n_shards = len(list(Path(cfg.out).glob("*.tar")))
        report = BuildReport(Path(cfg.out), sink.count, skipped, seconds, workers, n_shards)
        print(report.summary(), file=sys.stderr)
        self.finish(preview)
        return report


_WORKER: ShardBuilder | None = None
"""The set-up builder whose tasks this worker process runs: the only per-process state of a build."""


def start_worker(builder: ShardBuilder) -> None:
    """Make this process a worker of `builder` (the pool's initializer)."""
    global _WORKER
    builder.setup()
    _WORKER = builder


def run_in_worker(task: Any) -> Sample | Skipped:
    return _WORKER.make_sample(task)
