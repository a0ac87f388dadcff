"""What an OCR engine must provide to `Ocr`, and the registry of engines by name.

A new engine is one module (like glyphgen/ocr/rapid.py: the only place its library is imported) and
one entry in `ENGINES`; `OcrConfig.engine` picks it by that name. See docs/architecture.md,
"Extension points".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from glyphgen.config import require
from glyphgen.ocr.layout import Box, Detection


class Engine(Protocol):
    """An OCR engine as `Ocr` uses it.

    Images come in as uint8 RGB arrays of shape (height, width, 3), already upscaled by `Ocr`; boxes
    go out in that array's pixels. Filtering (confidence, corners), line grouping and the time limit
    are `Ocr`'s. A failure may raise any `Exception`: `Ocr` turns it into a one-line `OcrError`.
    Shard builders fork worker processes after using an engine, so an engine must drop in a forked
    child whatever does not survive fork() and rebuild it in `load`."""

    max_side: int
    """The engine shrinks images whose long side is over this before reading them, so `Ocr` never
    upscales past it."""

    def load(self) -> None:
        """Make the engine ready to run (load models, build sessions); cheap when it already is.
        `Ocr` calls it before starting the clock, so a reading's seconds and time limit cover that
        reading alone."""
        ...

    def read(self, rgb: np.ndarray) -> list[Detection]:
        """Every text box found, recognised: its box, text and score (`line` left at 0), unfiltered."""
        ...

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Every text box found, without recognising it (the detector alone)."""
        ...


EngineFactory = Callable[["OcrConfig"], Engine]

ENGINES: dict[str, str | EngineFactory] = {
    "rapidocr": "glyphgen.ocr.rapid:RapidOcr",
}
"""Engine factories by the name `OcrConfig.engine` gives: a factory, or "module:attribute" naming one,
imported on first use (so this registry imports no engine). A factory should be cheap: the heavy
work (imports, models) belongs in `Engine.load`."""


def unknown_engine(name: str) -> str:
    """The one-line complaint about an engine name that is not in `ENGINES`."""
    return f"unknown OCR engine {name!r}; known engines: {', '.join(sorted(ENGINES))}"


def resolve_engine(name: str) -> EngineFactory:
    """The factory registered as `name`; a one-line `ValueError` naming it and the choices if none is."""
    if name not in ENGINES:
        raise ValueError(unknown_engine(name))
    factory = ENGINES[name]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory


@dataclass
class OcrConfig:
    engine: str = "rapidocr"
    """The OCR engine: a name registered in `ENGINES` (glyphgen/ocr/engine.py). "rapidocr" is RapidOCR
    with PP-OCRv4 ONNX models, offline on CPU (glyphgen/ocr/rapid.py)."""
    min_confidence: float = 0.5
    """Detections whose recognition score is below this are dropped (counted in the result)."""
    corner_fraction: float = 0.1
    """Detections lying wholly inside a corner square whose side is this fraction of the image's short
    side are dropped (watermarks, page numbers, logos). 0 keeps everything."""
    upscale_to: int = 256
    """Images whose short side is below this are upscaled (bicubic) to it before OCR: the detector
    needs a few dozen pixels per text line (64 px images with 9+ px text read well at 256). The long
    side is never upscaled past the engine's `max_side` (RapidOCR: 2000 px), where the engine would
    shrink it back."""
    detector_side: int = 256
    """RapidOCR's: the detector's input short side: smaller images are enlarged to it, larger ones run
    at their own size (capped at 2000 px on the long side). RapidOCR's default, 736, is ~3x slower and
    no better on 64-256 px images."""
    line_overlap: float = 0.5
    """Two detections are on one line when their vertical overlap is at least this fraction of the
    shorter one's height."""
    angle_classifier: bool = False
    """RapidOCR's: run PP-OCR's 0/180 degree classifier on each crop. Off: glyphgen's text is upright,
    and the classifier costs time and sometimes flips short words."""
    threads: int = 0
    """RapidOCR's: onnxruntime threads per engine; 0 lets onnxruntime use every core (shard builders
    give each worker process its share instead)."""

    def __post_init__(self):
        require(self.engine in ENGINES, "engine", unknown_engine(self.engine))
        require(0.0 <= self.min_confidence <= 1.0, "min_confidence", "must be in [0, 1]")
        require(0.0 <= self.corner_fraction < 0.5, "corner_fraction", "must be in [0, 0.5)")
        require(self.upscale_to >= 0, "upscale_to", "must be >= 0 (0 disables upscaling)")
        require(self.detector_side >= 32, "detector_side", "must be >= 32")
        require(0.0 < self.line_overlap <= 1.0, "line_overlap", "must be in (0, 1]")
        require(self.threads >= 0, "threads", "must be >= 0")
