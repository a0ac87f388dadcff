"""Stage-2 data: real images with transcripts, as shards
(docs/architecture.md, "Real-image shards (stage 2)").

Input is a folder of images, each with an optional `name.txt` transcript beside `name.png` (frank's
format), or a JSONL manifest of `{"image": path, "text": optional}` lines (img2dataset-style
WebDataset tars go through the same per-image pipeline, `RealBuilder.make_sample`, in
glyphgen/data/real_wds.py). Images without a transcript are read by the OCR engine on the
full-size original; only then is the image resized and cropped to the stage resolution, around the
text it holds, and text that the crop cuts away is taken out of the transcript. Everything that can
be wrong with one input (unreadable, huge or extremely thin images, bad manifest lines, paths
escaping the named folder, unreadable transcripts, empty transcripts, OCR failures and time-outs) is
counted and skipped, never fatal; a manifest that is not UTF-8 text is one error naming its line.
The filters a practitioner sets (`RealFilters`, glyphgen/data/real_filters.py) drop samples as
counted skips too, and every build writes a report (glyphgen/data/real_report.py).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from glyphgen.config import require, require_path
from glyphgen.data.images import DEFAULT_MAX_PIXELS, BadImage, fit_square, load_image, to_png_bytes
from glyphgen.data.real_filters import Dedup, RealFilters, image_hash, record_boxes, screen
from glyphgen.data.shards import (
    SHARD_PATTERN,
    BuildReport,
    Sample,
    ShardBuildConfig,
    ShardBuilder,
    Skipped,
    resolve_workers,
    shard_members,
)
from glyphgen.ocr import Ocr, OcrConfig, OcrError, OcrTimeout
from glyphgen.ocr.layout import OcrResult, union

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_TRANSCRIPT_BYTES = 1 << 20  # a sidecar bigger than this is not a transcript
PREVIEW_COUNT = 32


@dataclass
class RealConfig(RealFilters, ShardBuildConfig):
    """A real-image build: its input, limits, OCR and, inherited from `RealFilters`
    (glyphgen/data/real_filters.py), the per-sample filters."""

    images: str | None = None
    """A folder of images (searched recursively), each with an optional `name.txt` transcript."""
    manifest: str | None = None
    """A JSONL file of {"image": path, "text": optional} lines; paths are relative to its folder and
    must stay inside it."""
    webdataset: str | None = None
    """img2dataset-style WebDataset tar shards (KEY.jpg/png/webp, KEY.txt caption, KEY.json): a tar
    path, a brace pattern (`shards/{00000..00099}.tar`) or a `pipe:`/URL pattern, typed by the user.
    Captions are kept in the metadata, never used as transcripts: the OCR reads every image.
    Give exactly one of `images`, `manifest` and `webdataset` (glyphgen/data/real_wds.py)."""
    part: str = "0/1"
    """With `webdataset`: `I/N` transcribes the I-th of N deterministic parts of the input shards
    (every N-th of the sorted list, starting at I), so N processes cover the input exactly once."""
    out: str = "data_shards/real-64"
    """Folder the shards and manifest.json are written to."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels than this (by their header) are skipped before decoding."""
    max_aspect: float = 50.0
    """Images whose long side is more than this many times their short side are skipped before any
    OCR: the OCR reads at most 2000 px on the long side, which leaves such an image too thin to read
    (and fails outright past ~125:1), and a stage-resolution square of it is a sliver."""
    ocr: OcrConfig = field(default_factory=OcrConfig)
    """How images without a transcript are read."""
    ocr_time_limit: float = 20.0
    """Seconds the OCR may spend on one image (reading it, or locating the text of a given transcript);
    an image over it is skipped. 0: no limit. A dense 2000x2000 page can take a minute."""
    locate_text: bool = True
    """For images with a given transcript, run the OCR detector (not the recogniser) to find the text
    so the square crop keeps all of it; off: a plain centre crop, which may cut text from wide images."""
    skip_empty: bool = True
    """Skip (and count) images whose transcript ends up empty: the model learns nothing about text
    from them, and under classifier-free guidance the null transcript already covers "no text"."""

    def __post_init__(self):
        given = [s for s in (self.images, self.manifest, self.webdataset) if s is not None]
        require(
            len(given) > 0,
            "images",
            "needs a folder of images (--images DIR), a JSONL manifest (--manifest FILE) or "
            "WebDataset shards (--webdataset SPEC)",
        )
        require(self.images is None or self.manifest is None, "manifest", "give images or manifest, not both")
        require(len(given) == 1, "webdataset", "give webdataset or images/manifest, not both")
        require(self.webdataset is None or self.webdataset.strip() != "", "webdataset", "is empty")
        require(
            self.part == "0/1" or self.webdataset is not None,
            "part",
            "only splits WebDataset input (--webdataset)",
        )
        parse_part(self.part)
        require_path(self.images, "images", kind="folder")
        require_path(self.manifest, "manifest", kind="file")
        require(
            self.manifest is None or Path(self.manifest).expanduser().is_file(),
            "manifest",
            f"{self.manifest!r} is not a file (give a JSONL manifest, or a folder with --images)",
        )
        super().__post_init__()
        require(self.max_pixels >= 1, "max_pixels", f"must be >= 1, got {self.max_pixels}")
        require(self.max_aspect >= 1, "max_aspect", f"must be >= 1, got {self.max_aspect}")
        require(
            math.isfinite(self.ocr_time_limit) and self.ocr_time_limit >= 0,
            "ocr_time_limit",
            f"must be a number of seconds >= 0 (0: no limit), got {self.ocr_time_limit}",
        )


@dataclass(frozen=True)
class RealTask:
    """One input image. `error` is set when the input is known to be bad before any reading."""

    index: int
    path: str = ""
    source: str = ""
    """The path as shown in metadata and warnings (relative to the named folder)."""
    text: str | None = None
    """The manifest's transcript, if it gave one."""
    sidecar: str | None = None
    """Path of the `name.txt` transcript beside the image, if there is one."""
    error: Skipped | None = None
    data: bytes | None = None
    """The encoded image itself (read from a tar), used instead of `path`."""
    key: str | None = None
    """The output sample's key; default: `index` as 8 digits."""
    extra: tuple[tuple[str, object], ...] = ()
    """(name, value) pairs added to the sample's metadata (a WebDataset caption, its url)."""


def parse_part(part: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N), with 0 <= I < N; a `ConfigValueError` naming `part` otherwise."""
    index, slash, count = str(part).strip().partition("/")
    ok = slash and index.isdigit() and count.isdigit() and index.isascii() and count.isascii()
    require(bool(ok), "part", f"must be I/N (e.g. 0/4), got {part!r}")
    i, n = int(index), int(count)
    require(n >= 1, "part", f"needs N >= 1 parts, got {part!r}")
    require(i < n, "part", f"index must be in [0, {n - 1}] for {n} parts, got {part!r}")
    return i, n


def normalise_transcript(text: str) -> str:
    """CRLF/CR to LF and trailing whitespace off every line and the end (it is invisible in an image)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip()


def _inside(path: str, root: str) -> bool:
    """Whether `path`, with symlinks resolved, lies inside the folder `root`."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) == base


def folder_tasks(root: str | Path) -> list[RealTask]:
    """Every image under `root` (sorted, hidden folders skipped, symlinked folders not followed)."""
    root = str(root)
    paths = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
    tasks = []
    for i, path in enumerate(paths):
        source = Path(os.path.relpath(path, root)).as_posix()
        if not _inside(path, root):
            tasks.append(RealTask(i, source=source, error=Skipped("path outside folder", source)))
            continue
        sidecar = os.path.splitext(path)[0] + ".txt"
        has_sidecar = os.path.isfile(sidecar) and _inside(sidecar, root)
        tasks.append(RealTask(i, path, source, sidecar=sidecar if has_sidecar else None))
    return tasks


def _manifest_task(index: int, line: str, where: str, root: str) -> RealTask:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        return RealTask(index, source=where, error=Skipped("bad manifest line", f"{where}: {e.msg}"))
    except RecursionError:  # [[[[...]]]] nested past Python's stack
        return RealTask(
            index, source=where, error=Skipped("bad manifest line", f"{where}: nested too deeply")
        )
    image = entry.get("image") if isinstance(entry, dict) else None
    text = entry.get("text") if isinstance(entry, dict) else None
    path_ok = isinstance(image, str) and image and "\0" not in image  # os calls refuse a NUL
    if not path_ok or not (text is None or isinstance(text, str)):
        why = 'needs {"image": "path", "text": "optional transcript"}'
        return RealTask(index, source=where, error=Skipped("bad manifest line", f"{where}: {why}"))
    # Resolved and checked before anything is opened (docs/architecture.md, "Safety"): absolute paths
    # and ../ must not escape.
    path = os.path.join(root, image)
    if not _inside(path, root):
        return RealTask(index, source=image, error=Skipped("path outside folder", f"{where}: {image}"))
    return RealTask(index, path, image, text=None if text is None else normalise_transcript(text))


def manifest_tasks(manifest: str | Path) -> list[RealTask]:
    """One task per non-blank line of a JSONL manifest; bad lines become counted skips. A file that is
    not UTF-8 (a BOM tolerated) is no JSONL manifest at all: one `ValueError` naming the line."""
    root = os.path.dirname(os.path.abspath(manifest))
    tasks = []
    try:
        with open(manifest, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{manifest}:{lineno}"
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line)") from None
                if line.strip():
                    tasks.append(_manifest_task(len(tasks), line, where, root))
    except OSError as e:
        raise ValueError(f"{manifest}: cannot read the manifest ({e.strerror or e})") from None
    return tasks


def read_sidecar(path: str) -> str:
    """A sidecar transcript as stored (UTF-8, a BOM tolerated), newlines and trailing space normalised."""
    with open(path, "rb") as f:
        data = f.read(MAX_TRANSCRIPT_BYTES + 1)
    if len(data) > MAX_TRANSCRIPT_BYTES:
        raise ValueError(f"larger than {MAX_TRANSCRIPT_BYTES} bytes")
    return normalise_transcript(data.decode("utf-8-sig"))


# -- OCR'd transcripts and fitting to the stage resolution -------------------------------------------


def ocr_and_fit(
    img: Image.Image, ocr: Ocr, resolution: int, limit: float = 0
) -> tuple[Image.Image, OcrResult, dict]:
    """OCR the full-size image (in at most `limit` seconds, 0: no limit), then fit it to `resolution`
    keeping all the text it read (so the transcript matches what the model sees). Returns the image,
    the reading (its `text` is the transcript) and metadata."""
    result = ocr.read(img, limit)
    fitted, padded = fit_square(img, resolution, keep=result.bounds)
    meta = {
        "transcript": "ocr",
        "ocr_confidence": round(result.confidence, 4),
        "ocr_dropped": result.dropped_low_confidence + result.dropped_corner,
        "padded": padded,
    }
    return fitted, result, meta


# -- the build ---------------------------------------------------------------------------------------


class RealBuilder(ShardBuilder):
    """One task per input image; each worker holds its own OCR engine, made on first use."""

    kind = "real"
    chunksize = 4  # OCR makes samples slow and uneven: small chunks keep the workers balanced
    stats = None
    """The report's counts (glyphgen/data/real_report.py) while a folder or manifest build runs."""

    def tasks(self) -> list[RealTask]:
        cfg = self.cfg
        return folder_tasks(cfg.images) if cfg.images is not None else manifest_tasks(cfg.manifest)

    def prepare(self, workers: int) -> None:
        self.cfg = dataclasses.replace(self.cfg, ocr=with_ocr_threads(self.cfg.ocr, workers))

    def setup(self) -> None:
        self.ocr = Ocr(self.cfg.ocr)  # the engine itself is only created if some image needs it

    def make_sample(self, task: RealTask) -> Sample | Skipped:
        if task.error is not None:
            return task.error
        cfg = self.cfg
        try:
            img = load_image(task.data if task.data is not None else task.path, cfg.max_pixels)
        except BadImage as e:
            return Skipped(e.reason, f"{task.source}: {e.detail}")
        if max(img.size) > cfg.max_aspect * min(img.size):
            why = f"{task.source}: {img.width}x{img.height} is over max_aspect={cfg.max_aspect:g}:1"
            return Skipped("extreme aspect ratio", why)
        meta = {"source": task.source, "width": img.width, "height": img.height, **dict(task.extra)}
        if cfg.drop_duplicates:
            meta["image_hash"] = image_hash(img)
        limit, scores = cfg.ocr_time_limit, None
        try:
            if task.sidecar is not None or task.text is not None:
                try:
                    text = read_sidecar(task.sidecar) if task.sidecar is not None else task.text
                except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
                    return Skipped("unreadable transcript", f"{task.source}: {e}")
                meta["transcript"] = "sidecar" if task.sidecar is not None else "manifest"
                boxes = self.ocr.detect(img, limit) if cfg.locate_text and text.strip() else None
                keep = union(boxes) if boxes is not None else None
                fitted, meta["padded"] = fit_square(img, cfg.resolution, keep)
            else:
                fitted, result, ocr_meta = ocr_and_fit(img, self.ocr, cfg.resolution, limit)
                meta.update(ocr_meta)
                text, keep = result.text, result.bounds
                boxes, scores = [d.box for d in result.lines], [d.confidence for d in result.lines]
        except OcrTimeout as e:
            return Skipped("OCR time limit", f"{task.source}: {e}")
        except OcrError as e:
            return Skipped("OCR failed", f"{task.source}: {e}")
        if boxes is not None:
            record_boxes(meta, boxes, scores, img.size, keep, cfg.resolution)
        text, dropped = screen(cfg, text, meta, fitted)
        if dropped is not None:
            return dropped
        key = task.key if task.key is not None else f"{task.index:08d}"
        return Sample(key, to_png_bytes(fitted), text, meta)

    def build(self, overwrite: bool = False, preview: str | Path | None = None) -> BuildReport:
        from glyphgen.data.real_report import ReportStats, clear_old_report

        clear_old_report(Path(os.path.abspath(self.cfg.out)), overwrite)
        self.stats = ReportStats()
        return super().build(overwrite, preview)

    def results(self, tasks, workers: int) -> Iterator[Sample | Skipped]:
        """ShardBuilder's results, with duplicates dropped, and counted for the report as they come."""
        from glyphgen.data.real_report import Progress

        dedup, progress, size = Dedup(), Progress(len(tasks)), self.cfg.shard_size
        for result in super().results(tasks, workers):
            result = dedup.check(result)
            self.stats.add(result, SHARD_PATTERN % (self.stats.kept // size))
            progress.tick(result)
            yield result

    def manifest_extra(self) -> dict:
        return {"source": str(self.cfg.images if self.cfg.images is not None else self.cfg.manifest)}

    def finish(self, preview: str | Path | None) -> None:
        print(transcript_summary(self.cfg.out), file=sys.stderr)
        if preview is not None:
            save_preview(self.cfg.out, preview)
        if self.stats is not None:
            from glyphgen.data.real_report import write_report

            write_report(self.cfg.out, self.stats.to_json())


def with_ocr_threads(ocr: OcrConfig, workers: int) -> OcrConfig:
    """Give each worker process its share of the cores (unless threads were set explicitly), so
    parallel OCR engines do not oversubscribe the machine."""
    if ocr.threads:
        return ocr
    return dataclasses.replace(ocr, threads=max(1, resolve_workers(0) // workers))


# -- reading back: summaries and previews ------------------------------------------------------------


def _shard_samples(folder: str | Path, exts: tuple[str, ...]) -> Iterator[dict[str, bytes]]:
    """The members named by `exts` of each sample in a shard folder, in shard order."""
    for shard in sorted(Path(folder).glob("*.tar")):
        yield from shard_members(shard, exts).values()


def read_samples(folder: str | Path, limit: int | None = None) -> Iterator[tuple[bytes, str, dict]]:
    """(png, transcript, metadata) of the first `limit` (default all) samples of a shard folder."""
    for n, parts in enumerate(_shard_samples(folder, ("png", "txt", "json"))):
        if limit is not None and n >= limit:
            return
        yield parts["png"], parts["txt"].decode("utf-8"), json.loads(parts["json"])


def transcript_summary(folder: str | Path) -> str:
    """One line: where the transcripts of a real shard folder came from."""
    origins = Counter(json.loads(p["json"]).get("transcript", "?") for p in _shard_samples(folder, ("json",)))
    return "transcripts: " + ", ".join(f"{n} {o}" for o, n in sorted(origins.items()))


def save_preview(folder: str | Path, path: str | Path, count: int = PREVIEW_COUNT) -> Path:
    """A grid of the first samples of a shard folder with their transcripts."""
    from glyphgen.data.preview import save_grid

    samples = list(read_samples(folder, count))
    images = [Image.open(io.BytesIO(png)) for png, _, _ in samples]
    return save_grid(images, [text for _, text, _ in samples], path, cell=128)


def build_real_shards(
    cfg: RealConfig, overwrite: bool = False, preview: str | Path | None = None
) -> BuildReport:
    """Turn `cfg.images` or `cfg.manifest` into shards at `cfg.out`; with `preview`, also write a grid
    PNG of the first samples and their transcripts there."""
    return RealBuilder(cfg).build(overwrite, preview)
