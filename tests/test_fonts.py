"""Font discovery: coverage from the cmap, the no-tofu rule, broken files, dedup, config errors."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

from glyphgen.config import ConfigError, load_config
from glyphgen.data.fonts import FontConfig, discover_fonts, fonts_covering, format_font_table
from glyphgen.data.synthetic import SyntheticConfig, SyntheticRenderer
from glyphgen.data.text_sources import SourceWeights, TextConfig
from glyphgen.text.tokenizer import DEFAULT_ALPHABET

TINY = "TinyTest-Regular"


def build_font(path: Path, chars: str, blank: str = "", name: str = TINY) -> Path:
    """A real TTF whose cmap maps only `chars` (drawn as boxes) and `blank` (empty glyphs) and space."""
    pen = TTGlyphPen(None)
    pen.moveTo((50, 0))
    for point in ((50, 700), (550, 700), (550, 0)):
        pen.lineTo(point)
    pen.closePath()
    box = pen.glyph()
    empty = TTGlyphPen(None).glyph()
    glyphs = {".notdef": box, "space": empty}
    glyphs.update({f"g{ord(c)}": box for c in chars})
    glyphs.update({f"g{ord(c)}": empty for c in blank})
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(list(glyphs))
    fb.setupCharacterMap({32: "space", **{ord(c): f"g{ord(c)}" for c in chars + blank}})
    fb.setupGlyf(glyphs)
    fb.setupHorizontalMetrics({g: (600, 50) for g in glyphs})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": "TinyTest", "styleName": "Regular", "psName": name})
    fb.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    fb.setupPost()
    path.parent.mkdir(parents=True, exist_ok=True)
    fb.save(str(path))
    return path


def only_folder(folder: Path) -> FontConfig:
    return FontConfig(font_dirs=[str(folder)], system_fonts=False, package_fonts=False, exclude=[])


def test_package_fonts_are_found_sorted_and_deduplicated():
    fonts = discover_fonts(FontConfig(), DEFAULT_ALPHABET)
    names = [f.name for f in fonts]
    assert len(fonts) >= 20
    assert names == sorted(names) and len(set(names)) == len(names)
    assert fonts == discover_fonts(FontConfig(), DEFAULT_ALPHABET)  # deterministic (and cached)
    lato = next(f for f in fonts if f.name == "Lato-Regular")
    assert lato.coverage == frozenset(DEFAULT_ALPHABET)
    # Source Sans ships each face as .otf and .ttf: counted once, as the .ttf.
    source_sans = [f for f in fonts if f.name == "SourceSansPro-Regular"]
    assert len(source_sans) == 1 and source_sans[0].path.endswith(".ttf")
    assert not any("AmaticSC" in n for n in names)  # small caps: excluded by default


def test_coverage_comes_from_the_cmap_and_needs_ink(tmp_path):
    build_font(tmp_path / "tiny.ttf", "abc", blank="e")
    [tiny] = discover_fonts(only_folder(tmp_path), DEFAULT_ALPHABET)
    assert tiny.name == TINY
    # "e" maps to a glyph without ink: a blank placeholder is not coverage.
    assert tiny.coverage == frozenset("abc \n")
    assert fonts_covering([tiny], "cab\nba c") == [tiny]
    assert fonts_covering([tiny], "abd") == []
    assert fonts_covering([tiny], "bee") == []


def test_font_lacking_a_glyph_is_never_chosen(tmp_path):
    build_font(tmp_path / "tiny.ttf", "abc")
    alphabet = "abcd \n"
    cfg = SyntheticConfig(
        fonts=FontConfig(font_dirs=[str(tmp_path)], system_fonts=False, exclude=[]),
        text=TextConfig(sources=SourceWeights(words=1, random_chars=2, numbers=0, punctuation=0, posts=1)),
        alphabet=alphabet,
    )
    fonts = discover_fonts(cfg.fonts, alphabet)
    tiny = next(f for f in fonts if f.name == TINY)
    assert tiny not in fonts_covering(fonts, "bad") and tiny in fonts_covering(fonts, "cab")
    renderer = SyntheticRenderer(cfg, [tiny, next(f for f in fonts if f.name == "Lato-Regular")])
    used = 0
    for i in range(300):
        sample = renderer.render_sample(i)
        if sample.meta["font"] == TINY:
            used += 1
            assert set(sample.text) <= set("abc \n"), sample.text
    assert used > 10  # the tiny font is drawn with whenever it can be


def test_broken_files_are_skipped_with_one_warning_each(tmp_path):
    build_font(tmp_path / "good.ttf", "abc")
    (tmp_path / "junk.ttf").write_bytes(os.urandom(2048))
    (tmp_path / "empty.otf").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fonts = discover_fonts(only_folder(tmp_path), DEFAULT_ALPHABET)
    assert [f.name for f in fonts] == [TINY]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert sum("junk.ttf" in m for m in messages) == 1
    assert sum("empty.otf" in m for m in messages) == 1


def test_folder_without_fonts_warns_and_no_fonts_at_all_raises(tmp_path):
    (tmp_path / "readme.txt").write_text("no fonts here")
    with pytest.warns(UserWarning, match=str(tmp_path)):
        discover_fonts(FontConfig(font_dirs=[str(tmp_path)], system_fonts=False), DEFAULT_ALPHABET)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="font_dirs"):
        discover_fonts(only_folder(tmp_path), DEFAULT_ALPHABET)


def test_missing_font_folder_is_a_config_error_naming_the_key(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"font_dirs\.0.*nowhere"):
        load_config(FontConfig, values={"font_dirs": [missing]})
    with pytest.raises(ConfigError, match=r"fonts\.font_dirs\.0"):
        load_config(SyntheticConfig, overrides=[f"fonts.font_dirs=[{missing}]"])


def test_exclude_by_name_substring(tmp_path):
    build_font(tmp_path / "a.ttf", "abc", name="KeepMe-Regular")
    build_font(tmp_path / "b.ttf", "abc", name="DropMe-Regular")
    cfg = FontConfig(font_dirs=[str(tmp_path)], system_fonts=False, package_fonts=False, exclude=["dropme"])
    assert [f.name for f in discover_fonts(cfg, DEFAULT_ALPHABET)] == ["KeepMe-Regular"]


def test_include_keeps_only_the_named_fonts_and_says_when_none_matches(tmp_path):
    build_font(tmp_path / "a.ttf", "abc", name="KeepMe-Regular")
    build_font(tmp_path / "b.ttf", "abc", name="KeepMe-Bold")
    build_font(tmp_path / "c.ttf", "abc", name="Other-Regular")
    cfg = FontConfig(font_dirs=[str(tmp_path)], system_fonts=False, package_fonts=False, exclude=[])
    keep = dataclasses.replace(cfg, include=["keepme"], exclude=["bold"])
    assert [f.name for f in discover_fonts(keep, DEFAULT_ALPHABET)] == ["KeepMe-Regular"]
    with pytest.raises(ValueError, match=r"fonts\.include \['Nowhere'\]"):
        discover_fonts(dataclasses.replace(cfg, include=["Nowhere"]), DEFAULT_ALPHABET)


def test_font_table_lists_coverage_and_missing_characters(tmp_path):
    build_font(tmp_path / "tiny.ttf", "abc")
    fonts = discover_fonts(only_folder(tmp_path), DEFAULT_ALPHABET)
    table = format_font_table(fonts, DEFAULT_ALPHABET)
    row = next(line for line in table.splitlines() if line.startswith(TINY))
    assert "5/96" in row and "A-Z" in row and "d-z" in row and "0-9" in row and str(tmp_path) in row
    assert table.splitlines()[-1].startswith("1 font,")
