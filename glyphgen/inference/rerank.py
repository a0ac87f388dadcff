"""Rejection sampling, the frank system's production workflow:

1. draw `n` base samples of the prompt;
2. read each with the OCR and score it by character-trigram similarity to the prompt;
3. prune: keep only the candidates scoring at least `high` if any does, else drop those under
   `low`; never drop every candidate (the best one always survives);
4. upsample the survivors through the cascade's superres stages (when it has any);
5. read those again and score them;
6. return the best (ties: the better base score, then the earlier candidate).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from glyphgen.config import require
from glyphgen.diffusion import SamplingOptions
from glyphgen.eval.metrics import normalize_text, trigram_similarity
from glyphgen.inference.bundle import Bundle
from glyphgen.inference.cascade import Cascade, StageProgress
from glyphgen.inference.sample import check_prompts, to_pil

if TYPE_CHECKING:
    from glyphgen.ocr import Ocr


@dataclass
class RerankConfig:
    high: float = 0.8
    """Keep only candidates scoring at least this, when any does (they are all good enough)."""
    low: float = 0.3
    """Otherwise drop candidates scoring below this (never all: the best one always survives)."""
    max_keep: int = 0
    """Upsample at most this many survivors, the best first, to bound the superres cost (0: all)."""

    def __post_init__(self):
        require(0 <= self.low <= 1, "low", f"must be in [0, 1], got {self.low}")
        require(self.low <= self.high <= 1, "high", f"must be in [low={self.low}, 1], got {self.high}")
        require(self.max_keep >= 0, "max_keep", f"must be >= 0, got {self.max_keep}")


def prune(scores: list[float], cfg: RerankConfig) -> list[int]:
    """Indices of the candidates to keep, best first (ties: the earlier one); never empty for a
    non-empty `scores`."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    high = [i for i in order if scores[i] >= cfg.high]
    kept = high or [i for i in order if scores[i] >= cfg.low] or order[:1]
    return kept[: cfg.max_keep] if cfg.max_keep else kept


def score(reading: str, prompt: str) -> float:
    """How well an OCR reading reproduces the prompt (both normalised as the evaluator does)."""
    return trigram_similarity(normalize_text(reading), normalize_text(prompt))


@dataclass
class Candidate:
    index: int
    """Position among the `n` base samples."""
    base_reading: str
    base_score: float
    kept: bool = False
    """Survived pruning (and was upsampled, with a superres bundle)."""
    final_reading: str | None = None
    """OCR of the upsampled image (the base reading again without a superres bundle)."""
    final_score: float | None = None


@dataclass
class RerankResult:
    prompt: str
    image: Image.Image
    chosen: int
    """Index of the chosen candidate."""
    candidates: list[Candidate]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "settings": self.settings,
            "candidates": [asdict(c) for c in self.candidates],
        }

    def save(self, image_path: str | Path) -> tuple[Path, Path]:
        """Write the chosen image and, beside it with the same name, the JSON of every candidate."""
        image_path = Path(image_path)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(image_path)
        report = image_path.with_suffix(".json")
        report.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return image_path, report


def rerank(
    prompt: str,
    cascade: Cascade | Bundle,
    n: int = 8,
    options: SamplingOptions | None = None,
    config: RerankConfig | None = None,
    ocr: Ocr | None = None,
    progress: StageProgress | None = None,
) -> RerankResult:
    """The best of `n` samples of `prompt` by OCR (see the module docstring), drawn by `cascade` (a
    bundle alone is a cascade without superres stages). `progress(stage)` may return a step
    callback for each stage, as in `Cascade.sample`."""
    cfg = config or RerankConfig()
    cascade = cascade if isinstance(cascade, Cascade) else Cascade(cascade)
    base, upsampled = cascade.base, bool(cascade.superres)
    check_prompts([prompt], base.tokenizer)
    if ocr is None:
        from glyphgen.ocr import Ocr

        ocr = Ocr()
    bar = progress or (lambda _stage: None)
    images = base.sample([prompt], n, options, progress=bar("base"))
    readings = [ocr.read(im).text for im in to_pil(images)]
    candidates = [Candidate(i, r, score(r, prompt)) for i, r in enumerate(readings)]
    kept = prune([c.base_score for c in candidates], cfg)

    finals = cascade.upsample(images[kept], [prompt] * len(kept), options, progress)
    pictures = to_pil(finals)
    for i, picture in zip(kept, pictures, strict=True):
        c = candidates[i]
        c.kept = True
        # Without a superres stage the final image is the base one: no second reading needed.
        c.final_reading = ocr.read(picture).text if upsampled else c.base_reading
        c.final_score = score(c.final_reading, prompt)
    rank = {i: (candidates[i].final_score, candidates[i].base_score, -i) for i in kept}
    best = max(range(len(kept)), key=lambda j: rank[kept[j]])
    settings = {
        "base": base.name,
        "superres": [stage.name for stage in cascade.superres],
        "n": n,
        **asdict(base.options(options)),
        "sr_guidance": cascade.sr_guidances(),
        "rerank": asdict(cfg),
    }
    return RerankResult(prompt, pictures[best], kept[best], candidates, settings)
