"""The quality run (`glyphgen quality`, `make quality-gpu`), rehearsed on the CPU with a tiny model and
a budget of seconds: shards are built, training stops on the clock, the bundle is exported and
evaluated with the real OCR, and the report says what happened."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from glyphgen.cli import main
from glyphgen.config import ConfigError, load_config
from glyphgen.eval.quality import QualityConfig, max_time, parse_budget, run_quality

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text, seconds",
    [("18m", 1080), ("1h30m", 5400), ("90s", 90), ("1.5m", 90), ("00:00:18:00", 1080), ("1:02:03:04", 93784)],
)
def test_budget_formats(text, seconds):
    assert parse_budget(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["18", "18 minutes", "m", "10m5", "1:2:3", "5x"])
def test_bad_budget_is_a_one_line_error_naming_the_key(text):
    with pytest.raises(ConfigError, match=r"budget.*DD:HH:MM:SS"):
        load_config(QualityConfig, values={"budget": text})


def test_max_time_is_lightnings_format():
    assert max_time(timedelta(minutes=18)) == "00:00:18:00"
    assert max_time(timedelta(days=2, hours=3, seconds=61)) == "02:03:01:01"
    assert max_time(timedelta(seconds=0.2)) == "00:00:00:01"  # never a zero budget


def write_pipeline(tmp_path: Path) -> Path:
    stage = tmp_path / "stage.yaml"
    stage.write_text(
        f"""stage: pretrain-synthetic
model_size: tiny
data: {{shards: {tmp_path / "shards"}, batch_size: 4, num_workers: 0, shuffle_buffer: 8, resampled: true}}
build_shards:
  kind: synthetic
  config: {ROOT / "configs/shards/synthetic32.yaml"}
  overrides: [count=64, shard_size=16, workers=1]
optim: {{lr: 1.0e-3, ema_decay: 0.9}}
trainer: {{accelerator: cpu, devices: 1, max_steps: 1000000, checkpoint_every_n_steps: 1000}}
sample: {{every_n_steps: 0}}
"""
    )
    pipeline = tmp_path / "quality.yaml"
    pipeline.write_text(
        f"name: q\nrun_root: {tmp_path / 'runs'}\nstages:\n"
        f"  - name: pretrain-synthetic\n    config: {stage}\n"
    )
    return pipeline


@pytest.mark.slow
def test_quality_run_trains_on_the_clock_exports_and_evaluates(tmp_path):
    cfg = load_config(
        QualityConfig,
        values={
            "pipeline": str(write_pipeline(tmp_path)),
            "name": "rehearsal",
            "budget": "3s",
            "prompt_sets": ["words", "posts"],
            "max_prompts": 2,
            "n": 1,
            "steps": "2",
            "batch_size": 4,
            "weights": "both",
            "device": "cpu",
        },
    )
    result = run_quality(cfg, command="glyphgen quality (test)")
    run = tmp_path / "runs" / "rehearsal"

    stage = result["stages"]["pretrain-synthetic"]
    assert 0 < stage["step"] < 1_000_000  # the clock, not max_steps, ended training
    assert stage["world_size"] == 1 and stage["segment_images"] == 4 * stage["step"]
    assert stage["images_per_second"] > 0 and stage["train_tflops_per_second"] > 0
    assert 0 < stage["mfu"] < 1.5 and result["matmul_peak"]["dtype"] == "float32"
    assert (run / "pretrain-synthetic" / "config.yaml").read_text().count("max_time: 00:00:00:03") == 1
    assert (run / "bundle" / "model.safetensors").is_file() and (
        run / "bundle-raw" / "model.safetensors"
    ).is_file()

    assert set(result["evaluations"]) == {"words", "posts", "words (raw)", "posts (raw)"}
    for evaluation in result["evaluations"].values():
        report = json.loads(Path(evaluation["report"]).read_text())
        assert len(report["samples"]) == 2  # max_prompts x n
        assert report["settings"]["steps"] == "2"
        assert 0 <= evaluation["metrics"]["cer"] and 0 <= evaluation["metrics"]["exact_transcript"] <= 1
        assert Path(evaluation["grid"]).is_file()

    assert json.loads((run / "quality.json").read_text()) == result
    report = (run / "quality.md").read_text()
    assert "glyphgen quality (test)" in report
    assert "| pretrain-synthetic |" in report and "| words |" in report and "| posts (raw) |" in report

    # Again: the finished stage is skipped and only the evaluation is redone.
    again = run_quality(cfg, command="again")
    before, after = result["stages"]["pretrain-synthetic"], again["stages"]["pretrain-synthetic"]
    assert after["step"] == before["step"] and after["images_per_second"] == before["images_per_second"]
    assert again["evaluations"]["words"]["metrics"]["cer"] == result["evaluations"]["words"]["metrics"]["cer"]


def test_cli_reports_a_missing_pipeline_in_one_line(tmp_path, capsys):
    assert main(["quality", "--pipeline", str(tmp_path / "none.yaml"), "--budget", "5s"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glyphgen: error:") and "none.yaml" in err and len(err.splitlines()) == 1
