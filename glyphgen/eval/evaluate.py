"""`glyphgen evaluate`: sample every prompt of a prompt set, read the images back with the OCR, and
score the readings against the prompts: the project's quality yardstick (docs/architecture.md,
"Sampling, the cascade, reranking and evaluation").

The evaluator takes any `generate(prompts, n) -> images` function, so what is measured is the
model (or cascade) behind it and nothing else; `Bundle.evaluate` passes the bundle's sampler.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from glyphgen.data.preview import save_grid
from glyphgen.eval.metrics import channel_spread, ocr_metrics, sample_scores

Generate = Callable[[list[str], int], list[Image.Image]]
"""generate(prompts, n) -> n images per prompt, prompt by prompt."""


@dataclass
class EvalReport:
    metrics: dict[str, float]
    """Corpus metrics (see `ocr_metrics`) plus `images_per_second` (sampling),
    `ocr_seconds_per_image` and `channel_spread` (colour cast, see `channel_spread`)."""
    samples: list[dict[str, Any]]
    """Per image: prompt, sample index, OCR reading, cer, similarity, exact."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How the images were made (bundle, seed, steps, ...)."""
    images: list[Image.Image] = field(default_factory=list, repr=False)
    """The images, in the order of `samples` (not written to the JSON)."""

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "metrics": self.metrics, "samples": self.samples}

    def summary(self) -> str:
        m = self.metrics
        return (
            f"{len(self.samples)} images: CER {m['cer']:.3f}, normalised edit distance "
            f"{m['normalized_edit_distance']:.3f}, exact transcript {m['exact_transcript']:.3f}, "
            f"exact line {m['exact_line']:.3f}, trigram similarity {m['trigram_similarity']:.3f}, "
            f"channel spread {m['channel_spread']:.3f}; "
            f"{m['images_per_second']:.2f} images/s sampling, {m['ocr_seconds_per_image']:.3f} s/image OCR"
        )

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write `report.json` and `grid.png` (each image with its prompt, OCR reading and scores)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        report = folder / "report.json"
        report.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        captions = [
            f"{_one_line(s['prompt'])}\n-> {_one_line(s['reading']) or '(nothing read)'}\n"
            f"sim {s['similarity']:.2f}  cer {s['cer']:.2f}"
            for s in self.samples
        ]
        return report, save_grid(self.images, captions, folder / "grid.png")


def _one_line(text: str) -> str:
    return text.replace("\n", " / ")


def evaluate(
    generate: Generate,
    prompts: Sequence[str],
    n: int = 2,
    ocr=None,
    settings: dict[str, Any] | None = None,
) -> EvalReport:
    """Draw `n` images per prompt with `generate`, OCR them and score them (see `ocr_metrics`)."""
    if not prompts:
        raise ValueError("no prompts to evaluate")
    prompts = list(prompts)
    start = time.perf_counter()
    images = generate(prompts, n)
    sampling = time.perf_counter() - start
    targets = [p for p in prompts for _ in range(n)]
    if len(images) != len(targets):
        raise ValueError(f"generate returned {len(images)} images for {len(prompts)} prompts x {n}")

    if ocr is None:
        from glyphgen.ocr import Ocr

        ocr = Ocr()
    results = [ocr.read(image) for image in images]
    readings = [r.text for r in results]
    metrics = ocr_metrics(readings, targets)
    metrics["images_per_second"] = len(images) / max(sampling, 1e-9)
    metrics["ocr_seconds_per_image"] = sum(r.seconds for r in results) / len(results)
    metrics["channel_spread"] = channel_spread(images)
    samples = [
        {"prompt": t, "sample": i % n, "reading": r, **scores}
        for i, (t, r, scores) in enumerate(
            zip(targets, readings, sample_scores(readings, targets), strict=True)
        )
    ]
    return EvalReport(metrics, samples, dict(settings or {}), images)
