"""The demo set's text (see `glyphgen.data.demo`): a fixed bank of phrases built from common English
words and numbers, display names, and the case styles signs and captions use. The held-out evaluation
words never appear, so the evaluator's word set stays unseen in stage 2 too."""

from __future__ import annotations

import random
import re
from functools import cache

_WORD = re.compile(r"[a-z]+('[a-z]+)?")
_UNWANTED = {"fuck", "fucking", "fucked", "shit", "bitch", "ass", "dick", "damn", "sex", "suicide", "murder"}


@cache
def words() -> tuple[str, ...]:
    """Common English words for the phrases, minus the held-out evaluation words."""
    from wordfreq import top_n_list

    from glyphgen.data.text_sources import read_word_list
    from glyphgen.eval.prompts import HELD_OUT_WORDS

    excluded = _UNWANTED | read_word_list(HELD_OUT_WORDS)
    return tuple(
        w
        for w in top_n_list("en", 3000)
        if _WORD.fullmatch(w) and (len(w) > 1 or w in ("a", "i")) and w not in excluded
    )


@cache
def short_words() -> tuple[str, ...]:
    """Words that make plausible display names ("Grace Field")."""
    return tuple(w for w in words() if 3 <= len(w) <= 6 and w.isalpha())


def _phrase(rng: random.Random, vocab: tuple[str, ...]) -> str:
    pick = rng.choice
    if rng.random() < 0.75:
        return " ".join(pick(vocab) for _ in range(rng.randint(1, 4)))
    n = rng.randint(2, 99)
    return pick(
        (
            f"{pick(vocab)} {n}",
            f"${n}.{rng.randint(0, 99):02d}",
            f"{n}% off",
            f"{rng.randint(1, 12)}:{pick(('00', '15', '30', '45'))} {pick(('am', 'pm'))}",
            f"since {rng.randint(1900, 2024)}",
            f"no. {rng.randint(1, 999)} {pick(vocab)}",
            f"{pick(vocab)} {pick(vocab)}!",
            f"{pick(vocab)}, {pick(vocab)}?",
        )
    )


@cache
def phrase_bank(size: int = 500) -> tuple[str, ...]:
    """The built-in phrases: a fixed list (independent of the build seed) of 1-4 common words or
    numbers, prices, times, years and punctuation."""
    rng = random.Random("glyphgen-demo-phrases")
    return tuple(_phrase(rng, words()) for _ in range(size))


def cased(rng: random.Random, text: str, upper: float) -> str:
    """UPPER with probability `upper`, else lower, Sentence or Title case alike."""
    if rng.random() < upper:
        return text.upper()
    return rng.choice((text, text[:1].upper() + text[1:], text.title()))
