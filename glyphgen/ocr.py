"""The OCR engine glyphgen uses everywhere: transcribing real images (stage 2 data) and scoring
generated samples (rerank, evaluation, training grids). See docs/architecture.md, "Real-image shards
(stage 2)" and "Sampling, the cascade, reranking and evaluation"; swapping the engine: "Extension points".

RapidOCR runs the PP-OCRv4 detector and recogniser (ONNX models shipped inside its wheel) offline on
CPU. This module turns its raw detections into a transcript the way glyphgen stores them: detections
below a confidence threshold or lying in a corner (watermarks, page numbers) are dropped, the rest are
grouped into lines by vertical overlap, lines are ordered top-to-bottom, words left-to-right, words
joined by a space and lines by "\\n".
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from glyphgen.config import require
from glyphgen.data.images import to_rgb

ENGINE_MAX_SIDE = 2000
"""RapidOCR shrinks any image whose long side is over this (its `max_side_len`) before reading it, so
upscaling past it only costs memory."""


@dataclass
class OcrConfig:
    min_confidence: float = 0.5
    """Detections whose recognition score is below this are dropped (counted in the result)."""
    corner_fraction: float = 0.1
    """Detections lying wholly inside a corner square whose side is this fraction of the image's short
    side are dropped (watermarks, page numbers, logos). 0 keeps everything."""
    upscale_to: int = 256
    """Images whose short side is below this are upscaled (bicubic) to it before OCR: the detector
    needs a few dozen pixels per text line (64 px images with 9+ px text read well at 256). The long
    side is never upscaled past 2000 px, where the engine would shrink it back."""
    detector_side: int = 256
    """The detector's input short side: smaller images are enlarged to it, larger ones run at their own
    size (capped at 2000 px on the long side). RapidOCR's default, 736, is ~3x slower and no better
    on 64-256 px images."""
    line_overlap: float = 0.5
    """Two detections are on one line when their vertical overlap is at least this fraction of the
    shorter one's height."""
    angle_classifier: bool = False
    """Run PP-OCR's 0/180 degree classifier on each crop. Off: glyphgen's text is upright, and the
    classifier costs time and sometimes flips short words."""
    threads: int = 0
    """onnxruntime threads per engine; 0 lets onnxruntime use every core (shard builders give each
    worker process its share instead)."""

    def __post_init__(self):
        require(0.0 <= self.min_confidence <= 1.0, "min_confidence", "must be in [0, 1]")
        require(0.0 <= self.corner_fraction < 0.5, "corner_fraction", "must be in [0, 0.5)")
        require(self.upscale_to >= 0, "upscale_to", "must be >= 0 (0 disables upscaling)")
        require(self.detector_side >= 32, "detector_side", "must be >= 32")
        require(0.0 < self.line_overlap <= 1.0, "line_overlap", "must be in (0, 1]")
        require(self.threads >= 0, "threads", "must be >= 0")


class OcrError(RuntimeError):
    """The OCR engine failed on one image (e.g. one too thin for it to resize); the message is one line."""


class OcrTimeout(OcrError):
    """Reading one image ran past the time limit set with `time_limit`."""


class _Expired(BaseException):
    """Raised by the alarm inside the engine. Not an `Exception`: RapidOCR wraps every `Exception` from
    onnxruntime in its own error, and this must reach `time_limit` as itself."""


_ALARM_ARMED = False
"""Whether the alarm may raise: cleared inside `time_limit`'s block, so a late alarm is harmless."""


def _alarm(signum, frame) -> None:
    if _ALARM_ARMED:
        raise _Expired


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `OcrTimeout` in the block once `seconds` have passed (0: no limit).

    SIGALRM-based: the limit holds on a process's main thread (shard builders run OCR there, in the
    main process or in pool workers); on other threads, and where there is no SIGALRM, there is none.
    The engine is interrupted between its onnxruntime calls, so one call (detection on a 2000 px image:
    seconds) may overshoot. An alarm someone else set is left alone when it is due first, and re-armed
    afterwards otherwise."""
    global _ALARM_ARMED
    main_thread = threading.current_thread() is threading.main_thread()
    if not seconds or not main_thread or not hasattr(signal, "setitimer"):
        yield
        return
    outer, interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < outer <= seconds:
        yield  # someone else's alarm fires first anyway
        return
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        try:
            _ALARM_ARMED = True  # before the timer starts, so even a tiny limit cannot fire unarmed
            signal.setitimer(signal.ITIMER_REAL, seconds)
            yield
        finally:
            _ALARM_ARMED = False
    except _Expired:
        raise OcrTimeout(f"OCR took longer than the {seconds:g}s time limit") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3), interval)


def _one_line(err: Exception) -> str:
    """`Type: message`, the message's last line only (onnxruntime errors arrive with a traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


@dataclass(frozen=True)
class Detection:
    """One recognised text box: `box` is (x0, y0, x1, y1) in the input image's pixels."""

    box: tuple[float, float, float, float]
    text: str
    confidence: float
    line: int = 0
    """Index of the line this detection was grouped into (0 = top line)."""


@dataclass(frozen=True)
class OcrResult:
    """A transcript: `lines` are the kept detections in reading order (each knows its line index)."""

    text: str
    lines: tuple[Detection, ...] = ()
    dropped_low_confidence: int = 0
    dropped_corner: int = 0
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return len(self.lines)

    @property
    def bounds(self) -> tuple[float, float, float, float] | None:
        """The box holding all kept text (None when nothing was kept)."""
        return union(d.box for d in self.lines)

    @property
    def confidence(self) -> float:
        """Mean recognition score over the kept characters (0 when nothing was kept)."""
        chars = sum(len(d.text) for d in self.lines)
        return sum(d.confidence * len(d.text) for d in self.lines) / chars if chars else 0.0


def _box_of(points) -> tuple[float, float, float, float]:
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def in_corner(box: tuple[float, float, float, float], width: int, height: int, fraction: float) -> bool:
    """Whether `box` lies wholly inside one of the four corner squares of side `fraction * short side`."""
    side = fraction * min(width, height)
    x0, y0, x1, y1 = box
    left, right = x1 <= side, x0 >= width - side
    top, bottom = y1 <= side, y0 >= height - side
    return (left or right) and (top or bottom)


def group_lines(dets: list[Detection], overlap: float) -> list[list[Detection]]:
    """Detections grouped into lines (top to bottom), each line ordered left to right.

    A detection joins the line whose vertical span it overlaps by at least `overlap` of the shorter
    height; scanning by vertical centre keeps slanted or ragged lines together."""
    lines: list[list[Detection]] = []
    spans: list[tuple[float, float]] = []
    for det in sorted(dets, key=lambda d: (d.box[1] + d.box[3]) / 2):
        y0, y1 = det.box[1], det.box[3]
        for i, (ly0, ly1) in enumerate(spans):
            shared = min(y1, ly1) - max(y0, ly0)
            if shared >= overlap * max(min(y1 - y0, ly1 - ly0), 1e-6):
                lines[i].append(det)
                spans[i] = (min(y0, ly0), max(y1, ly1))
                break
        else:
            lines.append([det])
            spans.append((y0, y1))
    order = sorted(range(len(lines)), key=lambda i: spans[i][0])
    return [sorted(lines[i], key=lambda d: d.box[0]) for i in order]


def union(boxes) -> tuple[float, float, float, float] | None:
    """The smallest box holding all `boxes` (None for none)."""
    boxes = list(boxes)
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


# An onnxruntime session does not survive fork(): its thread pool stays in the parent, so in a forked
# child (shard-building workers) running it or even destroying it hangs. After a fork every `Ocr`
# drops its inherited engine (kept referenced here, never destroyed) and builds its own on next use.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_INHERITED: list = []


def _after_fork_in_child() -> None:
    for ocr in list(_LIVE):
        if ocr._engine is not None:
            _INHERITED.append(ocr._engine)
            ocr._engine = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class Ocr:
    """Reads text from images. The RapidOCR engine is created on first use (about a second) and
    reused, so make one `Ocr` per process and keep it. Safe to use in forked worker processes."""

    def __init__(self, cfg: OcrConfig | None = None):
        self.cfg = cfg or OcrConfig()
        self._engine = None
        _LIVE.add(self)

    @property
    def engine(self):
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR  # heavy import: only where OCR really runs

            threads = {"intra_op_num_threads": self.cfg.threads} if self.cfg.threads else {}
            self._engine = RapidOCR(
                det_limit_side_len=self.cfg.detector_side,
                det_limit_type="min",
                use_cls=self.cfg.angle_classifier,
                text_score=0.0,  # confidence filtering happens here, so drops can be counted
                print_verbose=False,
                **threads,
            )
        return self._engine

    def _run(self, engine, image: Image.Image | np.ndarray, recognise: bool):
        """RapidOCR on the (upscaled) image: raw results, the scale applied, the original size.
        Whatever the engine raises comes out as a one-line `OcrError`."""
        rgb = to_rgb(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
        width, height = rgb.size
        # Up to `upscale_to` on the short side, but a thin image (1x8000) must not grow without bound.
        scale = min(self.cfg.upscale_to / max(min(width, height), 1), ENGINE_MAX_SIDE / max(width, height))
        if scale > 1:
            rgb = rgb.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
        else:
            scale = 1.0
        bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])  # RapidOCR takes arrays as BGR
        try:
            if recognise:
                raw, _ = engine(bgr)
            else:
                raw, _ = engine(bgr, use_cls=False, use_rec=False)
        except Exception as e:
            raise OcrError(f"the OCR engine failed on this {width}x{height} image ({_one_line(e)})") from e
        return raw or (), scale, width, height

    def _in_corner(self, box, width: int, height: int) -> bool:
        return bool(self.cfg.corner_fraction) and in_corner(box, width, height, self.cfg.corner_fraction)

    def read(self, image: Image.Image | np.ndarray, limit: float = 0) -> OcrResult:
        """Transcribe `image` (a PIL image in any mode, or a uint8 RGB/grayscale array). With `limit`,
        raise `OcrTimeout` once reading takes longer than that many seconds (see `time_limit`)."""
        engine = self.engine  # created before the clock starts: `seconds` is this image's cost alone
        start = time.perf_counter()
        with time_limit(limit):
            raw, scale, width, height = self._run(engine, image, recognise=True)
        kept, low, corner = [], 0, 0
        for points, text, score in raw:
            text = " ".join(str(text).split())
            box = tuple(v / scale for v in _box_of(points))
            if not text or float(score) < self.cfg.min_confidence:
                low += 1
            elif self._in_corner(box, width, height):
                corner += 1
            else:
                kept.append(Detection(box, text, float(score)))

        lines = group_lines(kept, self.cfg.line_overlap)
        ordered = tuple(Detection(d.box, d.text, d.confidence, i) for i, ln in enumerate(lines) for d in ln)
        text = "\n".join(" ".join(d.text for d in ln) for ln in lines)
        return OcrResult(text, ordered, low, corner, time.perf_counter() - start)

    def detect(
        self, image: Image.Image | np.ndarray, limit: float = 0
    ) -> list[tuple[float, float, float, float]]:
        """Where text is, without reading it (the detector alone, about half the cost of `read`):
        boxes as (x0, y0, x1, y1), corner detections dropped as in `read`; `limit` as in `read`."""
        engine = self.engine
        with time_limit(limit):
            raw, scale, width, height = self._run(engine, image, recognise=False)
        boxes = [tuple(v / scale for v in _box_of(points)) for points in raw]
        return [b for b in boxes if not self._in_corner(b, width, height)]
