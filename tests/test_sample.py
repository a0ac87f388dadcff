"""Sampling from bundles: the cascade, OCR rejection sampling (scores, pruning, end to end), output
paths, and one-line errors for bad prompts and bundles."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from bundle_fixtures import trained_checkpoints
from conftest import one_line_error
from PIL import Image
from safetensors.torch import save_file

from glyphgen.cli import main
from glyphgen.diffusion import SamplingOptions
from glyphgen.eval.metrics import trigram_similarity, trigrams
from glyphgen.eval.prompts import unescape_newlines
from glyphgen.inference import Cascade, RerankConfig, check_cascade, export_bundle, load_bundle, prune
from glyphgen.inference.format import WEIGHTS, write_config
from glyphgen.models.unet import UNet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    ckpts = trained_checkpoints(tmp_path_factory)
    root = tmp_path_factory.mktemp("bundles")
    return {name: export_bundle(path, root / name) for name, path in ckpts.items()}


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- scores and pruning -----------------------------------------------------------------------------


def test_trigram_similarity_matches_hand_computed_values():
    # "ab" -> "  ab  " -> {"  a", " ab", "ab ", "b  "}; "ac" -> {"  a", " ac", "ac ", "c  "}:
    # they share one trigram out of 4 + 4 - 1 = 7 distinct ones.
    assert trigrams("ab") == {"  a": 1, " ab": 1, "ab ": 1, "b  ": 1}
    assert trigram_similarity("ab", "ac") == pytest.approx(1 / 7)
    # Multisets: "aa" -> {"  a", " aa", "aa ", "a  "}, "a" -> {"  a", " a ", "a  "}: intersection
    # {"  a", "a  "} = 2, union 4 + 3 - 2 = 5.
    assert trigram_similarity("aa", "a") == pytest.approx(2 / 5)
    # "aaaa" has "aaa" twice, "aaa" once: the intersection counts it once, the union twice.
    # "aaaa": {"  a", " aa", "aaa" x2, "aa ", "a  "} (6); "aaa": {"  a", " aa", "aaa", "aa ", "a  "} (5)
    assert trigram_similarity("aaaa", "aaa") == pytest.approx(5 / 6)
    # Lines are padded one by one: "a\nb" -> {"  a", " a ", "a  ", "  b", " b ", "b  "};
    # "a b" -> {"  a", " a ", "a b", " b ", "b  "}: 4 shared, union 6 + 5 - 4 = 7.
    assert trigram_similarity("a\nb", "a b") == pytest.approx(4 / 7)
    assert trigram_similarity("same", "same") == 1.0 and trigram_similarity("", "xyz") == 0.0


CFG = RerankConfig(high=0.8, low=0.3)


@pytest.mark.parametrize(
    ("scores", "kept"),
    [
        ([0.9, 0.2, 0.85, 0.5], [0, 2]),  # high scorers exist: only they survive, best first
        ([0.5, 0.2, 0.7, 0.3], [2, 0, 3]),  # none high: those under `low` go
        ([0.1, 0.25, 0.0], [1]),  # all under `low`: the best one is kept anyway
        ([0.0, 0.0], [0]),  # ties: the earlier one
        ([0.8], [0]),  # the threshold itself counts as high
        ([0.3, 0.29], [0]),
    ],
)
def test_pruning_keeps_high_scorers_and_never_empties(scores, kept):
    assert prune(scores, CFG) == kept


def test_pruning_can_cap_the_survivors():
    assert prune([0.9, 0.95, 0.85, 0.1], RerankConfig(max_keep=2)) == [1, 0]
    assert prune([0.1], RerankConfig(max_keep=1)) == [0]


# -- sampling ----------------------------------------------------------------------------------------


def test_cascade_has_the_superres_resolution(bundles):
    base, sr = load_bundle(bundles["base"], "cpu"), load_bundle(bundles["superres"], "cpu")
    images = Cascade(base, [sr]).sample(
        ["hi", "ok"], n=2, options=SamplingOptions(seed=1, steps="2", batch_size=3)
    )
    assert images.shape == (4, 3, 64, 64)
    low = base.sample(["hi", "ok"], n=2, seed=1, steps="2", batch_size=3)
    assert low.shape == (4, 3, 32, 32)
    again = sr.sample(["hi", "hi", "ok", "ok"], seed=1, steps="2", batch_size=3, low_res=low)
    assert (again == images).all()  # the cascade is the base, then the superres on its output


def test_superres_bundle_must_fit_the_base(bundles):
    base, sr = load_bundle(bundles["base"], "cpu"), load_bundle(bundles["superres"], "cpu")
    config = copy.deepcopy(sr.config)
    config.model.resolution = 128  # as if it were a 64 -> 128 px model
    bigger = dataclasses.replace(sr, config=config)
    with pytest.raises(ValueError, match=r"upsamples 64 -> 128 px but the stage before it, .*, makes 32 px"):
        check_cascade(base, [bigger])
    with pytest.raises(ValueError, match=r"upsamples 32 -> 64 px but the stage before it, .*, makes 64 px"):
        check_cascade(base, [sr, sr])
    with pytest.raises(ValueError, match="takes no low-res images"):
        base.sample("hi", steps="2", low_res=base.sample("hi", steps="2"))
    with pytest.raises(ValueError, match="upsamples 32 px images to 64 px, got 64x64"):
        sr.sample("hi", steps="2", low_res=sr.sample("hi", steps="2", low_res=base.sample("hi", steps="2")))


def upsampler_128(bundles, folder):
    """A 64 -> 128 px superres bundle: the tiny-sr bundle's config one level deeper, untrained
    weights (what is tested is the cascade's plumbing, not the picture)."""
    config = copy.deepcopy(load_bundle(bundles["superres"], "cpu").config)
    config.model.resolution, config.model.channel_mult = 128, [1, 1, 1, 2, 2]
    torch.manual_seed(0)
    state = UNet(config.model).state_dict()
    folder.mkdir()
    write_config(config, folder)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / WEIGHTS)
    return folder


def test_a_three_stage_cascade_samples_from_python_and_the_cli(bundles, tmp_path, capsys):
    last = upsampler_128(bundles, tmp_path / "sr128")
    base, sr, sr2 = (load_bundle(p, "cpu") for p in (bundles["base"], bundles["superres"], last))
    cascade = Cascade(base, [sr, sr2])
    options = SamplingOptions(seed=2, steps="2", batch_size=4)
    seen = []
    images = cascade.sample(["hi", "ok"], 1, options, progress=lambda name: seen.append(name))
    assert images.shape == (2, 3, 128, 128) and seen == ["base", "superres 1", "superres 2"]
    assert cascade.resolution == 128 and Cascade(base).resolution == 32
    middle = Cascade(base, [sr]).sample(["hi", "ok"], 1, options)
    assert (sr2.sample(["hi", "ok"], 1, options, low_res=middle) == images).all()  # each stage feeds the next
    with pytest.raises(ValueError, match="makes 32 px images"):
        Cascade(base, [sr2, sr])  # out of order

    args = ["sample", "hi", "--base", bundles["base"], "--superres", bundles["superres"]]
    code, out, _ = cli([*args, "--superres", last, "--steps", "2", "--out", tmp_path / "x.png"], capsys)
    assert code == 0 and Image.open(tmp_path / "x.png").size == (128, 128)
    code, _, err = cli([*args[:4], "--superres", last, "--steps", "2", "--out", tmp_path / "y.png"], capsys)
    one_line_error(code, err, "upsamples 64 -> 128 px", "makes 32 px images")


def test_sample_cli_writes_pngs_where_documented(bundles, tmp_path, capsys):
    code, out, _ = cli(
        ["sample", "hi", "--base", bundles["base"], "--out", tmp_path / "one.png", "--steps", "2"], capsys
    )
    assert code == 0 and out.split() == [str(tmp_path / "one.png")]
    assert Image.open(tmp_path / "one.png").size == (32, 32)
    args = ["--base", bundles["base"], "--superres", bundles["superres"], "--steps", "2", "--n", "2"]
    code, out, _ = cli(["sample", "hi", *args, "--out", tmp_path / "many"], capsys)
    assert code == 0 and out.split() == [str(tmp_path / "many" / f"sample-{i}.png") for i in range(2)]
    assert all(Image.open(p).size == (64, 64) for p in out.split())
    code, out, _ = cli(["sample", "hi", *args, "--out", tmp_path / "x.png"], capsys)
    assert out.split() == [str(tmp_path / "x-0.png"), str(tmp_path / "x-1.png")]


def test_rerank_end_to_end_writes_the_image_and_every_candidate(bundles, tmp_path, capsys):
    args = ["sample", "ab\\ncd", "--base", bundles["base"], "--superres", bundles["superres"]]
    args += ["--n", "3", "--steps", "2", "--rerank", "--rerank-low", "0.0", "--out", tmp_path / "best.png"]
    code, out, _ = cli(args, capsys)
    assert code == 0 and out.split() == [str(tmp_path / "best.png"), str(tmp_path / "best.json")]
    assert Image.open(tmp_path / "best.png").size == (64, 64)
    report = json.loads((tmp_path / "best.json").read_text())
    assert report["prompt"] == "ab\ncd" and report["settings"]["rerank"]["low"] == 0.0
    candidates = report["candidates"]
    assert [c["index"] for c in candidates] == [0, 1, 2]
    # With low = 0 every candidate survives pruning (unless some are high): each was upsampled and read.
    kept = [c for c in candidates if c["kept"]]
    assert kept and all(isinstance(c["final_reading"], str) and 0 <= c["final_score"] <= 1 for c in kept)
    assert all(isinstance(c["base_reading"], str) and 0 <= c["base_score"] <= 1 for c in candidates)
    chosen = candidates[report["chosen"]]
    assert chosen["kept"] and chosen["final_score"] == max(c["final_score"] for c in kept)


def test_newlines_are_typed_as_backslash_n():
    assert unescape_newlines("Hello\\nworld") == "Hello\nworld"


# -- bad inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "fragments"),
    [
        ("", ["empty prompt"]),
        ("   ", ["empty prompt"]),
        ("x" * 200, ["200 characters long", "at most 94", "96 tokens"]),
        ("héllo wörld", ["outside the model's alphabet", "'é'", "'ö'"]),
    ],
)
def test_bad_prompts_get_one_line_errors(bundles, tmp_path, capsys, prompt, fragments):
    code, _, err = cli(["sample", prompt, "--base", bundles["base"], "--out", tmp_path / "x.png"], capsys)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "x.png").exists()


def test_bad_bundles_get_one_line_errors(bundles, tmp_path, capsys):
    out = ["--out", tmp_path / "x.png"]
    code, _, err = cli(["sample", "hi", "--base", tmp_path / "nowhere", *out], capsys)
    one_line_error(code, err, "nowhere", "bundle folder not found")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_bytes((bundles["base"] / "config.yaml").read_bytes())
    code, _, err = cli(["sample", "hi", "--base", partial, *out], capsys)
    one_line_error(code, err, "no model.safetensors")
    code, _, err = cli(["sample", "hi", "--base", bundles["superres"], *out], capsys)
    one_line_error(code, err, "is a super-resolution model")
    code, _, err = cli(
        ["sample", "hi", "--base", bundles["base"], "--superres", bundles["base"], *out], capsys
    )
    one_line_error(code, err, "is a base model", "not a super-resolution one")
    code, _, err = cli(["sample", "hi", "--base", bundles["base"], "--steps", "5000", *out], capsys)
    one_line_error(code, err, "invalid timestep spec '5000'")
