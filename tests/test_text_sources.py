"""Transcript sources: determinism, alphabet, length limits, case variants, held-out words."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from glyphgen.config import ConfigError, load_config
from glyphgen.data.text_sources import (
    LINE_SOURCES,
    POSTS,
    POSTS_FALLBACK,
    SOURCES,
    CaseWeights,
    SourceWeights,
    TextConfig,
    TextSampler,
)
from glyphgen.text.tokenizer import DEFAULT_ALPHABET


def only(source: str) -> SourceWeights:
    return SourceWeights(**{s: float(s == source) for s in SOURCES})


def draw(sampler: TextSampler, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sampler.sample(rng) for _ in range(n)]


def test_same_rng_seed_gives_the_same_texts():
    sampler = TextSampler(TextConfig(), DEFAULT_ALPHABET)
    assert draw(sampler, 200, seed=3) == draw(sampler, 200, seed=3)
    assert draw(sampler, 200, seed=3) != draw(sampler, 200, seed=4)


def test_texts_respect_alphabet_and_limits():
    cfg = TextConfig(max_chars=14, max_lines=3)
    sources = Counter()
    rng = random.Random(1)
    sampler = TextSampler(cfg, DEFAULT_ALPHABET)
    for _ in range(2000):
        text, source = sampler.sample_with_source(rng)
        sources[source] += 1
        assert set(text) <= set(DEFAULT_ALPHABET)
        lines = text.split("\n")
        assert 1 <= len(lines) <= 3
        for line in lines:
            assert 1 <= len(line) <= 14
            assert line == line.strip() and "  " not in line  # no invisible spaces in a transcript
    assert set(sources) == set(SOURCES)
    # Failed draws are redrawn from the same source, so the mix stays close to the weights.
    assert abs(sources["posts"] / 2000 - 0.2) < 0.05


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_produces_text(source):
    texts = draw(TextSampler(TextConfig(sources=only(source)), DEFAULT_ALPHABET), 300)
    assert len(set(texts)) > 100
    multi = sum("\n" in t for t in texts)
    assert multi == (300 if source == "posts" else 0)
    if source == "numbers":
        assert all(any(c.isdigit() for c in t) for t in texts)
    if source == "punctuation":
        assert all(any(not c.isalnum() and c != " " for c in t) for t in texts)


def test_every_line_source_has_its_method_and_posts_draw_from_them():
    assert SOURCES == ("words", "random_chars", "numbers", "punctuation", "posts")  # the drawing order
    assert set(LINE_SOURCES) == set(SOURCES) - {POSTS} and POSTS_FALLBACK in LINE_SOURCES
    assert all(callable(getattr(TextSampler, f"_{source}", None)) for source in LINE_SOURCES)
    # Posts only: their lines come from the fallback source alone.
    assert POSTS_FALLBACK == "words"
    sampler = TextSampler(TextConfig(sources=only(POSTS)), DEFAULT_ALPHABET)
    vocab = set(sampler.vocab)
    lines = [line for text in draw(sampler, 50) for line in text.split("\n")]
    assert len(lines) >= 100 and all(w.lower() in vocab for line in lines for w in line.split(" "))


def test_posts_have_two_to_five_lines():
    texts = draw(TextSampler(TextConfig(sources=only("posts"), max_lines=5), DEFAULT_ALPHABET), 500)
    assert {t.count("\n") + 1 for t in texts} == {2, 3, 4, 5}


def test_case_variants():
    upper = TextConfig(case=CaseWeights(as_is=0, lower=0, upper=1, title=0))
    assert all(t == t.upper() for t in draw(TextSampler(upper, DEFAULT_ALPHABET), 300))
    title = TextConfig(sources=only("words"), case=CaseWeights(as_is=0, lower=0, upper=0, title=1))
    for text in draw(TextSampler(title, DEFAULT_ALPHABET), 300):
        assert all(w[0] == w[0].upper() for w in text.split(" ")), text


def test_restricted_alphabet_is_respected():
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .,\n"
    for text in draw(TextSampler(TextConfig(), alphabet), 1000):
        assert set(text) <= set(alphabet), text


def test_excluded_words_never_appear(tmp_path):
    held_out = ["the", "and", "of", "to", "you", "Time", "people"]
    path = tmp_path / "held_out.txt"
    path.write_text("\n".join(held_out) + "\n\n")
    sampler = TextSampler(TextConfig(exclude_words_file=str(path)), DEFAULT_ALPHABET)
    banned = {w.lower() for w in held_out}
    for text in draw(sampler, 3000):
        words = set(re.findall(r"[a-z0-9']+", text.lower()))
        assert not words & banned, text
    # Without the list those words are common, so the test above means something.
    plain = draw(TextSampler(TextConfig(), DEFAULT_ALPHABET), 3000)
    assert sum(bool(set(re.findall(r"[a-z0-9']+", t.lower())) & banned) for t in plain) > 50


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sources.numbers=-1", "sources.numbers"),
        ("case.upper=-0.5", "case.upper"),
        ("max_chars=0", "max_chars"),
        ("word_skew=0.5", "word_skew"),
        ("exclude_words_file=/no/such/file.txt", "exclude_words_file"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(TextConfig, overrides=[override])


def test_word_skew_1_draws_every_word_equally_often():
    """The learning check's vocabulary: by default the most common word is drawn several times as
    often as the rarest; with word_skew 1 each is about 1/N of the draws."""

    def counts(**kw) -> Counter:
        cfg = TextConfig(
            sources=only("words"),
            case=CaseWeights(as_is=0, lower=0, upper=1, title=0),
            vocab_size=14,
            max_chars=3,
            exclude_words_file=None,
            **kw,
        )
        return Counter(draw(TextSampler(cfg, DEFAULT_ALPHABET), 6000))

    skewed, even = counts(), counts(word_skew=1)
    assert set(even) >= {"THE", "IS", "IT"}
    assert skewed["THE"] > 4 * skewed["IT"]
    words = [w for w in even if " " not in w]  # "A I" and the like are rare two-word draws
    share = [even[w] / sum(even.values()) for w in words]
    assert len(words) == 12 and max(share) < 1.4 * min(share), even


def test_all_zero_weights_is_an_error():
    zero = [f"sources.{s}=0" for s in SOURCES]
    with pytest.raises(ConfigError, match="sources: all source weights are zero"):
        load_config(TextConfig, overrides=zero)


def test_the_spelling_check_draws_2_to_4_capitals_and_never_a_held_out_string():
    """configs/shards/spell32.yaml's text settings: random capitals only, none of the scored strings."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    text = yaml.safe_load((root / "configs/shards/spell32.yaml").read_text())["text"]
    text["exclude_words_file"] = str(root / text["exclude_words_file"])
    cfg = load_config(TextConfig, overrides=[], values=text)
    held_out = {
        line for line in (root / "configs/prompts/spell-strings.txt").read_text().split() if line.isupper()
    }
    texts = draw(TextSampler(cfg, DEFAULT_ALPHABET), 20000)
    assert all(re.fullmatch(r"[A-Z]{2,4}", t) for t in texts)
    assert {len(t) for t in texts} == {2, 3, 4}
    assert not held_out & set(texts)
    # Without the exclusion, 20000 draws do meet some of the 40 held-out strings (the short ones).
    cfg.exclude_words_file = None
    assert held_out & set(draw(TextSampler(cfg, DEFAULT_ALPHABET), 20000))
