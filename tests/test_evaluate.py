"""The OCR evaluator: metrics, prompt files, the shipped held-out sets, and a real OCR reading
rendered text (a "model" that writes perfectly) or blank images (one that writes nothing)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import font_roboto
import pytest
from bundle_fixtures import trained_checkpoints
from PIL import Image, ImageDraw, ImageFont

from glyphgen.cli import main
from glyphgen.data.text_sources import TextConfig, TextSampler, read_word_list
from glyphgen.eval.evaluate import evaluate
from glyphgen.eval.metrics import normalize_text, ocr_metrics
from glyphgen.eval.prompts import SHIPPED, parse_prompts, prompt_file, read_prompts
from glyphgen.inference import export_bundle
from glyphgen.ocr import Ocr
from glyphgen.text.alphabet import DEFAULT_ALPHABET

ROBOTO = str(Path(font_roboto.__file__).parent / "files" / "Roboto-Regular.ttf")


@pytest.fixture(scope="module")
def ocr():
    return Ocr()


def render(prompts: list[str], n: int) -> list[Image.Image]:
    """A perfect "model": each prompt drawn large, black on white, with a real font."""
    font = ImageFont.truetype(ROBOTO, 40)
    images = []
    for prompt in prompts:
        for _ in range(n):
            image = Image.new("RGB", (320, 320), "white")
            ImageDraw.Draw(image).multiline_text((20, 20), prompt, font=font, fill="black", spacing=16)
            images.append(image)
    return images


def blank(prompts: list[str], n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), "white") for _ in range(len(prompts) * n)]


PROMPTS = [
    *read_prompts("words")[:3],
    *read_prompts("posts")[:2],
    read_prompts("random")[1],
    "Hello, world!",
]


def test_a_perfect_writer_scores_perfectly(ocr, tmp_path):
    report = evaluate(render, PROMPTS, n=1, ocr=ocr, settings={"model": "renderer"})
    m = report.metrics
    assert [s["reading"] for s in report.samples] == PROMPTS
    assert m["cer"] == 0 and m["normalized_edit_distance"] == 0
    assert m["exact_transcript"] == 1 and m["exact_line"] == 1 and m["trigram_similarity"] == 1
    assert m["images_per_second"] > 0 and 0 < m["ocr_seconds_per_image"] < 5
    report_path, grid = report.save(tmp_path)
    saved = json.loads(report_path.read_text())
    assert saved["settings"] == {"model": "renderer"} and len(saved["samples"]) == len(PROMPTS)
    assert saved["metrics"]["cer"] == 0 and Image.open(grid).size[0] > 128


def test_a_blank_writer_scores_nothing(ocr):
    report = evaluate(blank, PROMPTS[:3], n=2, ocr=ocr)
    m = report.metrics
    assert m["cer"] == pytest.approx(1.0) and m["normalized_edit_distance"] == 1.0
    assert m["exact_transcript"] == 0 and m["exact_line"] == 0 and m["trigram_similarity"] == 0
    assert [s["sample"] for s in report.samples] == [0, 1] * 3


def test_metrics_on_hand_made_readings():
    m = ocr_metrics(["abd", "one\ntwx", "same"], ["abc", "one\ntwo", "same"])
    # 1 + 1 + 0 edits over 3 + 7 + 4 target characters
    assert m["cer"] == pytest.approx(2 / 14)
    assert m["normalized_edit_distance"] == pytest.approx((1 / 3 + 1 / 7 + 0) / 3)
    assert m["exact_transcript"] == pytest.approx(1 / 3)
    assert m["exact_line"] == pytest.approx(2 / 4)  # of abc, one, two, same: one and same
    # Whitespace the OCR cannot see is not an error: runs of spaces, blank lines.
    assert normalize_text("  a   b \n\n c ") == "a b\nc"
    assert ocr_metrics(["a b\nc"], ["a  b\n\nc"])["exact_transcript"] == 1


def test_prompt_files(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# a comment\n\nhello\n  two\\nlines  \n#not a prompt\n")
    assert read_prompts(path) == ["hello", "two\nlines"]
    assert parse_prompts("") == []
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="words, random, posts"):
        prompt_file(tmp_path / "missing.txt")


def test_shipped_prompt_sets_are_held_out():
    sets = {name: read_prompts(name) for name in SHIPPED}
    assert all(30 <= len(p) <= 50 and len(set(p)) == len(p) for p in sets.values())
    words = set(sets["words"])
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)
    # Posts are 2-4 lines made only of held-out words.
    for post in sets["posts"]:
        assert 2 <= post.count("\n") + 1 <= 4, post
        assert {w.lower() for w in re.findall(r"[A-Za-z]+", post)} <= words, post
    assert all(len(s) >= 6 and s.isalnum() and s.lower() not in words for s in sets["random"])
    # Synthetic training text excludes the held-out words by default.
    sampler = TextSampler(TextConfig(), DEFAULT_ALPHABET)
    assert sampler.excluded == read_word_list(str(prompt_file("words"))) == frozenset(words)
    assert not words & set(sampler.vocab)


@pytest.mark.slow
def test_evaluate_cli_on_a_tiny_bundle(tmp_path_factory, tmp_path, capsys):
    bundle = export_bundle(trained_checkpoints(tmp_path_factory)["base"], tmp_path / "bundle")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nhi\nab\\ncd\n")
    code = main(
        [
            "evaluate",
            str(bundle),
            "--prompts",
            str(prompts),
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "CER" in out and str(tmp_path / "ev" / "report.json") in out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert [s["prompt"] for s in report["samples"]] == ["hi", "hi", "ab\ncd", "ab\ncd"]
    assert report["settings"]["steps"] == "2" and report["settings"]["n"] == 2
    assert 0 <= report["metrics"]["cer"] and (tmp_path / "ev" / "grid.png").is_file()
