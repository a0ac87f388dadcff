"""The RapidOCR engine: PP-OCRv4 detector and recogniser (ONNX models shipped inside the
rapidocr-onnxruntime wheel), offline on CPU. The only module that imports rapidocr or deals with
onnxruntime; registered as "rapidocr" in glyphgen/ocr/engine.py. Its settings are the RapidOCR fields
of `OcrConfig` (`detector_side`, `angle_classifier`, `threads`).
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING

import numpy as np

from glyphgen.ocr.layout import Box, Detection, box_of

if TYPE_CHECKING:
    from glyphgen.ocr.engine import OcrConfig

ENGINE_MAX_SIDE = 2000
"""RapidOCR shrinks any image whose long side is over this (its `max_side_len`) before reading it, so
upscaling past it only costs memory."""


# An onnxruntime session does not survive fork(): its thread pool stays in the parent, so in a forked
# child (shard-building workers) running it or even destroying it hangs. After a fork every engine
# drops its inherited RapidOCR (kept referenced here, never destroyed) and builds its own in `load`.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_INHERITED: list = []


def _after_fork_in_child() -> None:
    for engine in list(_LIVE):
        if engine._rapid is not None:
            _INHERITED.append(engine._rapid)
            engine._rapid = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class RapidOcr:
    """The `Engine` (glyphgen/ocr/engine.py) on RapidOCR. Creating it is free; `load` builds the
    RapidOCR object (about a second), once per process."""

    max_side = ENGINE_MAX_SIDE

    def __init__(self, cfg: OcrConfig):
        self.cfg = cfg
        self._rapid = None
        _LIVE.add(self)

    def load(self) -> None:
        if self._rapid is None:
            from rapidocr_onnxruntime import RapidOCR  # heavy import: only where OCR really runs

            threads = {"intra_op_num_threads": self.cfg.threads} if self.cfg.threads else {}
            self._rapid = RapidOCR(
                det_limit_side_len=self.cfg.detector_side,
                det_limit_type="min",
                use_cls=self.cfg.angle_classifier,
                text_score=0.0,  # confidence filtering happens in `Ocr`, so drops can be counted
                print_verbose=False,
                **threads,
            )

    def _run(self, rgb: np.ndarray, **kwargs):
        self.load()
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # RapidOCR takes arrays as BGR
        raw, _ = self._rapid(bgr, **kwargs)
        return raw or ()

    def read(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection(box_of(points), str(text), float(score)) for points, text, score in self._run(rgb)]

    def detect(self, rgb: np.ndarray) -> list[Box]:
        return [box_of(points) for points in self._run(rgb, use_cls=False, use_rec=False)]
