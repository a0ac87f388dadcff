"""The embedded demo set: composed photographs with text, transcribed by the OCR like real data."""

from __future__ import annotations

import io
import re
import string

import pytest
from PIL import Image

from glyphgen.data.demo import (
    ALPHABET,
    Composer,
    DemoRealConfig,
    StyleWeights,
    build_demo_real_shards,
)
from glyphgen.data.demo_text import phrase_bank
from glyphgen.data.fonts import discover_fonts
from glyphgen.data.real import read_samples
from glyphgen.data.shards import read_manifest


@pytest.fixture(scope="module")
def composer():
    cfg = DemoRealConfig()
    return Composer(cfg, discover_fonts(cfg.fonts, ALPHABET))


def test_small_build(tmp_path):
    cfg = DemoRealConfig(out=str(tmp_path / "demo"), count=8, workers=1)
    report = build_demo_real_shards(cfg, preview=tmp_path / "grid.png")
    samples = list(read_samples(tmp_path / "demo"))
    assert report.count == len(samples) >= 7  # at most one unreadable composition skipped
    assert {Image.open(io.BytesIO(png)).size for png, _, _ in samples} == {(64, 64)}
    assert all(text.strip() for _, text, _ in samples)
    assert all(meta["transcript"] == "ocr" and meta["drawn_text"] for _, _, meta in samples)
    # The OCR reads most compositions exactly (spaces aside, where the recogniser sometimes slips).
    same = sum(text.replace(" ", "") == meta["drawn_text"].replace(" ", "") for _, text, meta in samples)
    assert same >= len(samples) // 2
    assert read_manifest(tmp_path / "demo")["kind"] == "real"
    assert (tmp_path / "grid.png").exists()


def test_composition_is_deterministic_and_styled(composer):
    for index in range(12):
        a, b = composer.compose(index), composer.compose(index)
        assert a[0].tobytes() == b[0].tobytes() and a[1:] == b[1:]
        img, lines, style = a
        assert img.size == (256, 256) and lines and style in ("caption", "sign", "subtitle", "tweet")
    assert composer.compose(0)[0].tobytes() != composer.compose(1)[0].tobytes()


def test_style_weights_select_styles():
    cfg = DemoRealConfig(styles=StyleWeights(caption=0, sign=0, subtitle=0, tweet=1))
    only_tweets = Composer(cfg, discover_fonts(cfg.fonts, ALPHABET))
    assert {only_tweets.compose(i)[2] for i in range(6)} == {"tweet"}


def test_phrase_bank_is_fixed_printable_text():
    bank = phrase_bank()
    assert len(bank) >= 300 and len(set(bank)) > 250
    assert all(set(p) <= set(ALPHABET) and p == p.strip() for p in bank)
    assert any(re.search(r"\d", p) for p in bank) and any(set(p) & set(string.punctuation) for p in bank)
    assert phrase_bank() is bank


def test_phrase_bank_never_uses_a_held_out_evaluation_word(monkeypatch, tmp_path):
    from glyphgen.data import demo_text as demo
    from glyphgen.data.text_sources import read_word_list
    from glyphgen.eval import prompts

    held_out = read_word_list(prompts.HELD_OUT_WORDS)
    used = {w.lower().strip(",!?") for p in phrase_bank() for w in p.split()}
    assert held_out and not held_out & used

    # The exclusion is real, not luck: a held-out list naming common words removes them.
    common = demo.words()[:5]
    (tmp_path / "words.txt").write_text("\n".join(common) + "\n")
    monkeypatch.setattr(prompts, "HELD_OUT_WORDS", str(tmp_path / "words.txt"))
    demo.words.cache_clear()
    try:
        assert not set(common) & set(demo.words())
    finally:
        demo.words.cache_clear()
