"""The OCR glyphgen uses everywhere: transcribing real images (stage 2 data) and scoring generated
samples (rerank, evaluation, training grids). See docs/architecture.md, "Real-image shards (stage 2)"
and "Sampling, the cascade, reranking and evaluation"; swapping the engine: "Extension points".

`Ocr` is engine-independent: it upscales small images, runs the engine named by `OcrConfig.engine`
(glyphgen/ocr/engine.py; the default, RapidOCR, is glyphgen/ocr/rapid.py) under a time limit, and turns
its raw detections into a transcript the way glyphgen stores them (glyphgen/ocr/layout.py): detections
below a confidence threshold or lying in a corner (watermarks, page numbers) are dropped, the rest are
grouped into lines by vertical overlap, lines are ordered top-to-bottom, words left-to-right, words
joined by a space and lines by "\\n".
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from glyphgen.data.images import to_rgb
from glyphgen.ocr.engine import ENGINES, Engine, OcrConfig, resolve_engine
from glyphgen.ocr.layout import Box, Detection, OcrResult, group_lines, in_corner, scaled, union
from glyphgen.ocr.rapid import ENGINE_MAX_SIDE  # RapidOCR's; kept importable from here

__all__ = [
    "ENGINES",
    "ENGINE_MAX_SIDE",
    "Detection",
    "Engine",
    "Ocr",
    "OcrConfig",
    "OcrError",
    "OcrResult",
    "OcrTimeout",
    "group_lines",
    "in_corner",
    "time_limit",
    "union",
]


class OcrError(RuntimeError):
    """The OCR engine failed on one image (e.g. one too thin for it to resize); the message is one line."""


class OcrTimeout(OcrError):
    """Reading one image ran past the time limit set with `time_limit`."""


class _Expired(BaseException):
    """Raised by the alarm inside the engine. Not an `Exception`: engines may wrap every `Exception`
    (RapidOCR wraps onnxruntime's in its own error), and this must reach `time_limit` as itself."""


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
    The engine is interrupted between its native calls (RapidOCR: onnxruntime), so one call (detection
    on a 2000 px image: seconds) may overshoot. An alarm someone else set is left alone when it is due
    first, and re-armed afterwards otherwise."""
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


class Ocr:
    """Reads text from images. The engine is made ready on first use (RapidOCR: about a second) and
    reused, so make one `Ocr` per process and keep it. Safe to use in forked worker processes."""

    def __init__(self, cfg: OcrConfig | None = None):
        self.cfg = cfg or OcrConfig()
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The engine `cfg.engine` names, created on first use and loaded (again after a fork)."""
        if self._engine is None:
            self._engine = resolve_engine(self.cfg.engine)(self.cfg)
        self._engine.load()
        return self._engine

    def _prepare(self, engine: Engine, image: Image.Image | np.ndarray) -> tuple[np.ndarray, float, int, int]:
        """The image as an RGB array upscaled for the engine, the scale applied, the original size."""
        rgb = to_rgb(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
        width, height = rgb.size
        # Up to `upscale_to` on the short side, but a thin image (1x8000) must not grow without bound.
        scale = min(self.cfg.upscale_to / max(min(width, height), 1), engine.max_side / max(width, height))
        if scale > 1:
            rgb = rgb.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
        else:
            scale = 1.0
        return np.asarray(rgb), scale, width, height

    def _run(self, engine: Engine, image: Image.Image | np.ndarray, recognise: bool):
        """The engine on the (upscaled) image: its detections (or boxes) in the input image's pixels
        and the original size. Whatever the engine raises comes out as a one-line `OcrError`."""
        rgb, scale, width, height = self._prepare(engine, image)
        try:
            found = engine.read(rgb) if recognise else engine.detect(rgb)
        except Exception as e:
            raise OcrError(f"the OCR engine failed on this {width}x{height} image ({_one_line(e)})") from e
        if recognise:
            return [Detection(scaled(d.box, scale), d.text, d.confidence) for d in found], width, height
        return [scaled(box, scale) for box in found], width, height

    def _in_corner(self, box: Box, width: int, height: int) -> bool:
        return bool(self.cfg.corner_fraction) and in_corner(box, width, height, self.cfg.corner_fraction)

    def read(self, image: Image.Image | np.ndarray, limit: float = 0) -> OcrResult:
        """Transcribe `image` (a PIL image in any mode, or a uint8 RGB/grayscale array). With `limit`,
        raise `OcrTimeout` once reading takes longer than that many seconds (see `time_limit`)."""
        engine = self.engine  # loaded before the clock starts: `seconds` is this image's cost alone
        start = time.perf_counter()
        with time_limit(limit):
            found, width, height = self._run(engine, image, recognise=True)
        kept, low, corner = [], 0, 0
        for det in found:
            text = " ".join(det.text.split())
            if not text or det.confidence < self.cfg.min_confidence:
                low += 1
            elif self._in_corner(det.box, width, height):
                corner += 1
            else:
                kept.append(Detection(det.box, text, det.confidence))

        lines = group_lines(kept, self.cfg.line_overlap)
        ordered = tuple(Detection(d.box, d.text, d.confidence, i) for i, ln in enumerate(lines) for d in ln)
        text = "\n".join(" ".join(d.text for d in ln) for ln in lines)
        return OcrResult(text, ordered, low, corner, time.perf_counter() - start)

    def detect(self, image: Image.Image | np.ndarray, limit: float = 0) -> list[Box]:
        """Where text is, without reading it (the detector alone, about half the cost of `read`):
        boxes as (x0, y0, x1, y1), corner detections dropped as in `read`; `limit` as in `read`."""
        engine = self.engine
        with time_limit(limit):
            boxes, width, height = self._run(engine, image, recognise=False)
        return [b for b in boxes if not self._in_corner(b, width, height)]
