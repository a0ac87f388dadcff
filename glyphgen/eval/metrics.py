"""Scores of an OCR reading against the prompt it should reproduce.

Both sides are normalised first (`normalize_text`): the OCR joins the words of a line with one
space and drops empty lines, so a prompt's runs of spaces or blank lines are not counted as errors
the model made. Case and punctuation count.

Character error rate and edit distances come from torchmetrics; exact-line accuracy and the
character-trigram similarity (also the rejection sampler's score) are defined here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from PIL import Image


def normalize_text(text: str) -> str:
    """Each line's whitespace collapsed to single spaces and stripped; empty lines dropped."""
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def trigrams(text: str) -> Counter[str]:
    """The multiset of character trigrams of `text`, each line padded with two spaces at both ends
    (so short words still have trigrams and first and last letters weigh as much as middle ones)."""
    grams: Counter[str] = Counter()
    for line in text.split("\n"):
        padded = f"  {line}  "
        grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


def trigram_similarity(a: str, b: str) -> float:
    """|A & B| / |A | B| over the trigram multisets of `a` and `b` (1 for identical texts, 0 for
    texts sharing no trigram)."""
    ta, tb = trigrams(a), trigrams(b)
    union = sum((ta | tb).values())
    return sum((ta & tb).values()) / union if union else 1.0


def line_matches(prediction: str, target: str) -> tuple[int, int]:
    """(target lines reproduced exactly at the same line index, target lines)."""
    predicted, wanted = prediction.split("\n"), target.split("\n")
    return sum(p == w for p, w in zip(predicted, wanted, strict=False)), len(wanted)


def ocr_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """Corpus scores of OCR readings against their prompts (both normalised):
    - `cer`: character error rate, total edits / total target characters (torchmetrics);
    - `normalized_edit_distance`: mean of edit distance / max(len(reading), len(prompt));
    - `exact_transcript`: fraction of readings equal to their prompt;
    - `exact_line`: fraction of prompt lines read back exactly at the same line index;
    - `trigram_similarity`: mean character-trigram similarity."""
    from torchmetrics.functional.text import char_error_rate, edit_distance

    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"need as many readings as prompts (and some): {len(predictions)} vs {len(targets)}")
    preds = [normalize_text(p) for p in predictions]
    wanted = [normalize_text(t) for t in targets]
    distances = edit_distance(preds, wanted, reduction="none").tolist()
    lengths = [max(len(p), len(t)) for p, t in zip(preds, wanted, strict=True)]
    matched, lines = map(
        sum, zip(*(line_matches(p, t) for p, t in zip(preds, wanted, strict=True)), strict=True)
    )
    count = len(wanted)
    return {
        "cer": float(char_error_rate(preds, wanted)),
        "normalized_edit_distance": sum(d / n if n else 0.0 for d, n in zip(distances, lengths, strict=True))
        / count,
        "exact_transcript": sum(p == t for p, t in zip(preds, wanted, strict=True)) / count,
        "exact_line": matched / lines,
        "trigram_similarity": sum(map(trigram_similarity, preds, wanted)) / count,
    }


def sample_scores(predictions: Sequence[str], targets: Sequence[str]) -> list[dict[str, float | bool]]:
    """Per-reading scores (normalised texts): `cer` (edits / prompt characters), `similarity`
    (trigram) and `exact`."""
    from torchmetrics.functional.text import edit_distance

    preds = [normalize_text(p) for p in predictions]
    wanted = [normalize_text(t) for t in targets]
    distances = edit_distance(preds, wanted, reduction="none").tolist()
    return [
        {"cer": d / max(len(t), 1), "similarity": trigram_similarity(p, t), "exact": p == t}
        for p, t, d in zip(preds, wanted, distances, strict=True)
    ]


def mean_channel_spread(values: np.ndarray, axis: int = -1) -> float:
    """Mean of (largest - smallest) along the channel `axis` of values on [0, 1]."""
    return float((values.max(axis=axis) - values.min(axis=axis)).mean())


def channel_spread(images: Sequence[Image.Image]) -> float:
    """Mean over images and pixels of (largest - smallest channel value), on [0, 1]: 0 for grey
    images, so it measures the colour cast of a model trained on grey data."""
    spreads = [
        mean_channel_spread(np.asarray(image.convert("RGB"), dtype=np.float64) / 255) for image in images
    ]
    return sum(spreads) / len(spreads)
