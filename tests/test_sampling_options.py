"""One set of sampling options: defaults from the model, keyword shortcuts, validation, and the same
options reaching every way of sampling (bundle, evaluation, training grids, the CLI)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from glyphgen.cli import main
from glyphgen.config import ConfigValueError, load_config
from glyphgen.diffusion import DiffusionConfig, SamplingOptions, with_options
from glyphgen.inference import load_bundle
from glyphgen.training.config import SampleConfig, StageConfig

BUNDLE = Path(__file__).parent / "data" / "bundle-74f265e"  # tiny, untrained, 16 px


def test_unset_fields_come_from_the_model():
    d = DiffusionConfig(sample_steps="ddim20", sampler="dpmpp2m", guidance=2.5, guidance_rescale=0.5)
    resolved = SamplingOptions(guidance=1.0, seed=4).resolve(d)
    assert resolved == SamplingOptions(
        steps="ddim20", sampler="dpmpp2m", guidance=1.0, guidance_rescale=0.5, threshold=0.0, eta=0.0, seed=4
    )
    assert with_options(resolved, guidance=None, steps="10").steps == "10"  # None changes nothing
    assert with_options(resolved, guidance=None).guidance == 1.0


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("sampler", "euler", "sampler: must be one of ddpm, ddim, dpmpp2m"),
        ("guidance", float("nan"), "guidance: must be a finite number >= 0"),
        ("guidance_rescale", 1.5, "guidance_rescale: must be in [0, 1]"),
        ("threshold", 1.0, "threshold: must be in [0, 1)"),
        ("eta", -1.0, "eta: must be >= 0"),
        ("batch_size", 0, "batch_size: must be >= 1"),
    ],
)
def test_bad_options_name_the_field(field, value, says):
    with pytest.raises(ConfigValueError, match=re.escape(says)):
        SamplingOptions(**{field: value})


def test_the_cli_offers_the_samplers_of_the_library(capsys):
    from glyphgen.diffusion import Sampler

    with pytest.raises(SystemExit):
        main(["sample", "hi", "--base", "b", "--out", "o.png", "--sampler", "euler"])
    err = capsys.readouterr().err
    assert "invalid choice: 'euler'" in err and all(name in err for name in Sampler.values())


def test_steps_are_checked_against_the_model():
    with pytest.raises(ConfigValueError, match="steps: invalid timestep spec '5000' for 1000 steps"):
        SamplingOptions(steps="5000").resolve(DiffusionConfig())


def test_training_grids_draw_like_the_exported_bundle():
    stage = load_config(StageConfig, overrides=["diffusion.guidance=2.0", "diffusion.sampler=dpmpp2m"])
    grid = with_options(stage.sample).resolve(stage.diffusion)
    assert (grid.guidance, grid.sampler, grid.steps) == (2.0, "dpmpp2m", stage.diffusion.sample_steps)
    assert isinstance(SampleConfig(), SamplingOptions)


def test_options_and_keyword_shortcuts_draw_the_same_images():
    bundle = load_bundle(BUNDLE, device="cpu")
    options = SamplingOptions(steps="3", sampler="ddpm", seed=5, batch_size=2)
    a = bundle.sample(["ab", "c"], n=2, options=options)
    b = bundle.sample(["ab", "c"], n=2, steps="3", sampler="ddpm", seed=5, batch_size=2)
    assert torch.equal(a, b)
    c = bundle.sample(["ab", "c"], n=2, options=options, guidance_rescale=0.7, threshold=0.9)
    assert not torch.equal(a, c)  # the new knobs reach the sampler


def test_the_cli_hands_every_option_to_the_report(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("ab\nc\n")
    args = ["evaluate", str(BUNDLE), "--prompts", str(prompts), "--out", str(tmp_path / "r"), "--n", "1"]
    args += ["--steps", "3", "--sampler", "dpmpp2m", "--guidance", "1.5", "--guidance-rescale", "0.7"]
    args += ["--threshold", "0.99", "--eta", "0.5", "--seed", "3", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "r" / "report.json").read_text())["settings"]
    expected = SamplingOptions("3", "dpmpp2m", 1.5, 0.7, 0.99, 0.5, 3, 2)
    assert {k: settings[k] for k in dataclasses.asdict(expected)} == dataclasses.asdict(expected)


def test_grid_weights_are_checked():
    assert SampleConfig(weights="both").weights == "both"
    with pytest.raises(
        ConfigValueError, match=re.escape("weights: must be one of ema, raw, both, got 'avg'")
    ):
        SampleConfig(weights="avg")
