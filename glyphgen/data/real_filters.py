"""Filters for real-image shard builds (`make-shards real`, every input kind): the `RealFilters`
settings that `RealConfig` inherits, the per-sample checks `RealBuilder.make_sample` runs, and the
within-build duplicate check the building process runs on the results in output order.

Every dropped sample is a `Dropped` skip (a `Skipped` with a small JPEG thumbnail of what would have
been the sample, for the report's grid of dropped samples), counted under its own reason. All filters
are off by default. The numbers they test are recorded in each kept sample's json: `lines`,
`ocr_confidence` (OCR transcripts), `text_boxes` and `text_area` (where text boxes are known) and,
with `drop_duplicates`, `image_hash`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from glyphgen.config import Choice, require
from glyphgen.data.images import square_window
from glyphgen.data.shards import Sample, Skipped
from glyphgen.text.alphabet import DEFAULT_ALPHABET

ALPHABET = frozenset(DEFAULT_ALPHABET)
THUMB_SIDE = 96
"""Long side, in pixels, of the thumbnails dropped samples carry to the report."""


class OutsideAlphabet(Choice):
    """What happens to a transcript holding characters outside the tokenizer's alphabet."""

    keep = "keep"
    drop = "drop"
    strip = "strip"


@dataclass
class RealFilters:
    """Per-sample filters of a real-image build; each dropped sample is counted under its reason."""

    min_mean_confidence: float = 0.0
    """OCR transcripts whose confidence (the mean of the kept detections' recognition scores,
    weighted by their characters: `ocr_confidence` in the json) is below this are dropped
    ("low OCR confidence"). Given transcripts (sidecar, manifest) have no score and are never
    dropped by it. 0: off."""
    min_chars: int = 0
    """Transcripts with fewer characters than this (line breaks not counted, spaces counted) are
    dropped ("too few characters"). 0: off."""
    max_chars: int = 0
    """Transcripts with more characters than this are dropped ("too many characters"). 0: no limit."""
    outside_alphabet: OutsideAlphabet = OutsideAlphabet.keep
    """Characters outside the tokenizer's alphabet (glyphgen.text.alphabet.DEFAULT_ALPHABET): "keep"
    them, "drop" the sample ("outside alphabet"), or "strip" them from the transcript (the image
    still shows them; the json's `stripped` counts them). Checked first, so the other filters see
    the stripped transcript."""
    min_text_area: float = 0.0
    """Samples whose text covers less than this fraction of the stored image are dropped ("small text
    area"): the area of the union of the text boxes (the OCR's kept detections, or the detector's
    boxes for a given transcript), mapped into the output square, over its area. Samples without
    boxes (given transcripts with `locate_text` off) are never dropped by it. 0: off."""
    max_lines: int = 0
    """Transcripts with more lines than this are dropped ("too many lines"). 0: no limit."""
    drop_duplicates: bool = False
    """Drop images whose decoded pixels equal an earlier image's in the same build ("duplicate
    image"; a hash of the decoded full-size image, recorded as `image_hash`). With `--part`, within
    the part; merge-shards then drops the copies found in more than one part."""

    def __post_init__(self):
        self.outside_alphabet = OutsideAlphabet.parse(self.outside_alphabet, "outside_alphabet")
        conf, area = self.min_mean_confidence, self.min_text_area
        require(0.0 <= conf <= 1.0, "min_mean_confidence", f"must be in [0, 1], got {conf}")
        require(0.0 <= area <= 1.0, "min_text_area", f"must be in [0, 1], got {area}")
        require(self.min_chars >= 0, "min_chars", f"must be >= 0, got {self.min_chars}")
        require(self.max_chars >= 0, "max_chars", f"must be >= 0 (0: no limit), got {self.max_chars}")
        require(
            not self.max_chars or self.max_chars >= self.min_chars,
            "max_chars",
            f"{self.max_chars} is below min_chars={self.min_chars}",
        )
        require(self.max_lines >= 0, "max_lines", f"must be >= 0 (0: no limit), got {self.max_lines}")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


@dataclass(frozen=True)
class Dropped(Skipped):
    """A skip with a thumbnail (JPEG bytes) of the image it dropped, for the report."""

    thumb: bytes = b""


def count_chars(text: str) -> int:
    return len(text) - text.count("\n")


def count_lines(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def thumbnail(img: Image.Image) -> bytes:
    """A small JPEG of `img` (long side at most THUMB_SIDE)."""
    small = img.convert("RGB")
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def image_hash(img: Image.Image) -> str:
    """A hash of the decoded image: mode, size and pixel bytes."""
    digest = hashlib.blake2b(f"{img.mode} {img.width}x{img.height}".encode(), digest_size=16)
    digest.update(img.tobytes())
    return digest.hexdigest()


def apply_alphabet(cfg: RealFilters, text: str, meta: dict) -> tuple[str, str | None]:
    """The transcript after `outside_alphabet`, and the detail of a drop (None: kept)."""
    outside = sorted({c for c in text if c not in ALPHABET})
    if not outside or cfg.outside_alphabet == OutsideAlphabet.keep:
        return text, None
    if cfg.outside_alphabet == OutsideAlphabet.drop:
        return text, f"{''.join(outside)!r} in {text!r}"
    meta["stripped"] = sum(c not in ALPHABET for c in text)
    kept = "".join(c for c in text if c in ALPHABET)
    return "\n".join(line.rstrip() for line in kept.split("\n")).rstrip(), None


def check_sample(cfg: RealFilters, text: str, meta: dict) -> tuple[str, str] | None:
    """(reason, detail) of the first filter that drops this transcript and its metadata, else None."""
    chars, lines = count_chars(text), count_lines(text)
    if chars < cfg.min_chars:
        return "too few characters", f"{chars} < min_chars={cfg.min_chars}: {text!r}"
    if cfg.max_chars and chars > cfg.max_chars:
        return "too many characters", f"{chars} > max_chars={cfg.max_chars}"
    if cfg.max_lines and lines > cfg.max_lines:
        return "too many lines", f"{lines} > max_lines={cfg.max_lines}"
    conf = meta.get("ocr_confidence")
    if conf is not None and conf < cfg.min_mean_confidence:
        return "low OCR confidence", f"{conf:.3f} < min_mean_confidence={cfg.min_mean_confidence:g}: {text!r}"
    area = meta.get("text_area")
    if area is not None and area < cfg.min_text_area:
        return "small text area", f"{area:.4f} < min_text_area={cfg.min_text_area:g}"
    return None


def output_boxes(boxes, window, size: int) -> list[list[float]]:
    """Boxes in the source image's pixels -> in the `size` output square cut from `window` (the
    source square `square_window` chose), clipped to it, rounded to 0.1 px."""
    x0, y0, x1, _ = window
    scale = size / (x1 - x0)
    return [
        [round(min(max((v - o) * scale, 0.0), size), 1) for v, o in zip(box, (x0, y0, x0, y0), strict=True)]
        for box in boxes
    ]


def union_area(boxes) -> float:
    """The area covered by the union of axis-aligned boxes (overlaps counted once): a sweep over the
    vertical slabs between box edges, merging the covered intervals in each."""
    xs = sorted({v for b in boxes for v in (b[0], b[2])})
    area = 0.0
    for left, right in zip(xs, xs[1:], strict=False):
        spans = sorted((b[1], b[3]) for b in boxes if b[0] <= left and b[2] >= right and b[3] > b[1])
        covered, top, bottom = 0.0, None, None
        for s0, s1 in spans:
            if bottom is None or s0 > bottom:
                covered += 0.0 if bottom is None else bottom - top
                top, bottom = s0, s1
            else:
                bottom = max(bottom, s1)
        covered += 0.0 if bottom is None else bottom - top
        area += covered * (right - left)
    return area


def record_boxes(meta: dict, boxes, scores, source_size: tuple[int, int], keep, size: int) -> None:
    """Where the text is in the stored `size` square that `fit_square(..., keep)` cut from the source
    image (`text_boxes`), the fraction of it the text covers (`text_area`) and, for OCR transcripts,
    each box's score (`ocr_scores`)."""
    placed = output_boxes(boxes, square_window(*source_size, keep), size)
    meta["text_boxes"] = placed
    meta["text_area"] = round(union_area(placed) / size**2, 4)
    if scores is not None:
        meta["ocr_scores"] = [round(s, 4) for s in scores]


def screen(cfg, text: str, meta: dict, image: Image.Image) -> tuple[str, Dropped | None]:
    """The transcript after `outside_alphabet`, and the `Dropped` skip of the first filter (or of
    `cfg.skip_empty`) that drops the sample, with a thumbnail of `image`; records `lines` in `meta`."""
    source = meta.get("source", "")
    text, outside = apply_alphabet(cfg, text, meta)
    if outside is not None:
        return text, Dropped("outside alphabet", f"{source}: {outside}", thumbnail(image))
    if cfg.skip_empty and not text.strip():
        return text, Dropped("empty transcript", source, thumbnail(image))
    if (drop := check_sample(cfg, text, meta)) is not None:
        return text, Dropped(drop[0], f"{source}: {drop[1]}", thumbnail(image))
    meta["lines"] = count_lines(text)
    return text, None


class Dedup:
    """Drops samples whose `image_hash` was seen before in this build (first one kept)."""

    def __init__(self, seen: set[str] | None = None):
        self.seen = set(seen or ())

    def check(self, result: Sample | Skipped) -> Sample | Skipped:
        digest = result.meta.get("image_hash") if isinstance(result, Sample) else None
        if digest is None:
            return result
        if digest in self.seen:
            thumb = thumbnail(Image.open(io.BytesIO(result.png)))
            detail = f"{result.meta.get('source', result.key)}: the same image as an earlier sample"
            return Dropped("duplicate image", detail, thumb)
        self.seen.add(digest)
        return result
