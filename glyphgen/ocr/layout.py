"""Transcript layout: how recognised text boxes become a transcript, with no OCR engine involved.

Pure functions on boxes (x0, y0, x1, y1) and `Detection`s: bounding boxes of polygons, the corner test
that drops watermarks and page numbers, grouping into lines by vertical overlap, and unions. `Ocr`
(glyphgen/ocr/__init__.py) applies them to whatever engine it runs; glyphgen/data/real.py uses `union`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels, x0 <= x1 and y0 <= y1."""


@dataclass(frozen=True)
class Detection:
    """One recognised text box: `box` is (x0, y0, x1, y1) in the input image's pixels."""

    box: Box
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
    def bounds(self) -> Box | None:
        """The box holding all kept text (None when nothing was kept)."""
        return union(d.box for d in self.lines)

    @property
    def confidence(self) -> float:
        """Mean recognition score over the kept characters (0 when nothing was kept)."""
        chars = sum(len(d.text) for d in self.lines)
        return sum(d.confidence * len(d.text) for d in self.lines) / chars if chars else 0.0


def box_of(points: Iterable) -> Box:
    """The axis-aligned box around a polygon given as (x, y) points (an engine's quadrilateral)."""
    points = list(points)
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def scaled(box: Box, factor: float) -> Box:
    """`box` with every coordinate divided by `factor` (back from an upscaled image to the input)."""
    x0, y0, x1, y1 = box
    return x0 / factor, y0 / factor, x1 / factor, y1 / factor


def in_corner(box: Box, width: int, height: int, fraction: float) -> bool:
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


def union(boxes: Iterable[Box]) -> Box | None:
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
