"""bench/run.py at tiny scale on the CPU: the timing helper, the matmul peak, the model, sampling and
data benches, the table printer and the data-headroom arithmetic; text_gap's pairing and gap; the
ablation's scoring settings and learning-curve checkpoints; the OCR on a shard's own images."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import ablate  # noqa: E402
import colour_cast  # noqa: E402
import data_ocr  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
import text_gap  # noqa: E402

from glyphgen import perf  # noqa: E402


def test_timed_warms_up_then_reports_median_and_spread():
    sleeps = iter([0.2, 0.01, 0.05, 0.03])  # the first call is the warm-up and is not timed
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(sleeps))

    t = perf.timed(fn, repeats=3, warmup=1)
    assert len(calls) == 4 and t["runs"] == 3
    assert 0.01 <= t["min_s"] < t["median_s"] < t["max_s"]
    assert 0.03 <= t["median_s"] < 0.05 <= t["max_s"] < 0.2


def test_per_second_turns_times_into_rates():
    rate = run.per_second(10, {"median_s": 2.0, "min_s": 1.0, "max_s": 5.0})
    assert rate == {"images_per_s": 5.0, "spread": [2.0, 10.0]}


def test_matmul_peak_is_a_positive_finite_rate():
    peak = perf.matmul_peak("cpu", n=256, repeats=2)
    assert peak["dtype"] == "float32" and peak["n"] == 256
    assert math.isfinite(peak["TFLOP_per_s"]) and peak["TFLOP_per_s"] > 0


@pytest.fixture(scope="module")
def tiny_rows():
    peak = perf.matmul_peak("cpu", n=1024, repeats=3)["TFLOP_per_s"] * 1e12
    return run.model_rows({"tiny": 2}, "cpu", ["eager", "channels_last"], repeats=1, peak=peak)


def test_model_bench_rows_per_mode_and_variant(tiny_rows):
    got = {(r["attention"], r["variant"]) for r in tiny_rows}
    assert got == {(m, v) for m in ("weave", "glide", "none") for v in ("eager", "channels_last")}
    for r in tiny_rows:
        assert r["bench"] == "fwd+bwd" and r["model"] == "tiny" and r["batch"] == 2
        assert r["images_per_s"] > 0 and r["spread"][0] <= r["images_per_s"] <= r["spread"][1]
        assert 0 < r["mfu"] < 1.5
        assert r["TFLOP_per_s"] == pytest.approx(3 * r["fwd_GFLOP_per_img"] * 1e9 * r["images_per_s"] / 1e12)
        assert r["act_MiB_per_img"] > 0 and "peak_MiB" not in r


def test_weave_saves_more_activations_than_no_text(tiny_rows):
    act = {r["attention"]: r["act_MiB_per_img"] for r in tiny_rows if r["variant"] == "eager"}
    assert act["weave"] > act["none"]


def test_sampling_bench_base_and_superres():
    rows = [run.sampling_rate(name, 1, "cpu", repeats=1, steps=2) for name in ("tiny", "tiny-sr")]
    assert [r["superres"] for r in rows] == [False, True]
    assert [r["resolution"] for r in rows] == [32, 64]
    for r in rows:
        assert r["steps"] == 2 and r["guidance"] == 3.0 and r["images_per_s"] > 0


def test_render_rate_is_positive():
    row = run.render_rate(32, 4, repeats=1)
    assert row["resolution"] == 32 and row["images_per_s"] > 0


def test_transcription_rate_reads_real_images_and_prices_a_million():
    row = run.transcribe_rate(128, 3, repeats=1)
    assert row["bench"] == "real-image transcription (1 core)" and row["resolution"] == 128
    assert row["images_per_s"] > 0
    assert math.isclose(row["core_hours_per_million"], 1e6 / row["images_per_s"] / 3600)


def test_table_aligns_columns():
    rows = [
        {"model": "tiny", "images_per_s": 18.6, "spread": [17.0, 19.5], "mfu": 0.4},
        {"model": "base64-long", "images_per_s": 1234.5, "spread": [1200.0, 1300.0], "mfu": 0.05},
    ]
    lines = report.table(rows).splitlines()
    header, rule, *body = lines
    assert header.split() == ["model", "images_per_s", "spread", "mfu"] and len(body) == 2
    assert set(rule) == {"-", " "}
    # Text columns start where their header starts; number columns end where theirs ends.
    assert all(
        line.index(row["model"]) == header.index("model") for line, row in zip(body, rows, strict=True)
    )
    for key in ("images_per_s", "spread", "mfu"):
        end = header.index(key) + len(key)
        for line, row in zip(body, rows, strict=True):
            cell = report.fmt(row[key])
            assert line.index(cell) + len(cell) == end, (key, line)
    assert "1,234" in body[1] and "17..19.5" in body[0]


def test_headroom_workers():
    assert report.workers_for_headroom(100.0, 50.0) == 2  # 3 x 50 = 150 images/s needs 2 workers
    assert report.workers_for_headroom(1000.0, 10.0) == 1
    data = [{"bench": "loader decode+tokenize", "images_per_s": 100.0}]
    model = [
        {"bench": "fwd+bwd", "model": "tiny", "attention": "weave", "variant": v, "images_per_s": ips}
        for v, ips in (("eager", 40.0), ("compile", 70.0))
    ] + [
        {"bench": "fwd+bwd", "model": "tiny", "attention": "none", "variant": "eager", "images_per_s": 500.0}
    ]
    line = report.headroom_line(data, model, "tiny")
    assert "(compile)" in line and "-> 3 loader worker(s)" in line  # the fastest weave variant: 3 x 70
    assert report.headroom_line([], model, "tiny") is None


def test_cli_sections_variants_and_cuda_guard():
    args = run.parse_args(["--only", "sampling", "--device", "cpu"])
    assert args.sections == ["sampling"] and args.variants == ["eager"] and args.kind == "cpu"
    assert run.parse_args(["--device", "cpu"]).sections == ["data", "model", "sampling"]
    forced = run.parse_args(["--device", "cpu", "--variants", "eager,compile"])
    assert forced.variants == ["eager", "compile"]
    for bad in (["--only", "speed"], ["--variants", "turbo"]):
        with pytest.raises(SystemExit):
            run.parse_args(["--device", "cpu", *bad])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            run.parse_args(["--device", "cuda"])


def test_text_gap_pairs_each_image_with_another_word():
    assert text_gap.other_texts(["A", "A", "B", "C"]) == [2, 2, 3, 0]
    assert text_gap.other_texts(["A", "A"]) == [0, 1]  # nothing else to swap in: itself


@pytest.mark.parametrize("mode", ["none", "weave"])
def test_text_gap_is_zero_exactly_when_the_model_ignores_its_text(mode):
    import dataclasses

    from glyphgen.diffusion import DiffusionConfig, create_diffusion
    from glyphgen.inference.bundle import Bundle
    from glyphgen.inference.format import BundleConfig
    from glyphgen.models.registry import model_config
    from glyphgen.models.unet import UNet
    from glyphgen.text.tokenizer import CharTokenizer, TokenizerConfig

    torch.manual_seed(0)
    cfg = dataclasses.replace(model_config("tiny"), text_attention=mode)
    model = UNet(cfg).eval()
    with torch.no_grad():  # zero-initialised output layers would hide the text path: perturb them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokenizer = TokenizerConfig(max_length=cfg.text.max_length)
    config = BundleConfig(model=cfg, tokenizer=tokenizer)
    bundle = Bundle(model, create_diffusion(DiffusionConfig()), CharTokenizer(tokenizer), config)
    texts = ["THE", "TO", "AND", "THE"]
    tokens, mask = bundle.tokenizer.batch(texts)
    batch = {
        "image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
        "tokens": tokens,
        "mask": mask,
    }
    gaps = text_gap.text_gap(bundle, {**batch, "text": texts}, [300, 700], seed=0)
    for right, wrong in gaps.values():
        assert (wrong == right) if mode == "none" else (wrong != right)


def test_ablation_settings_parse_sampler_steps_and_optional_guidance():
    assert ablate.parse_setting("dpmpp2m:ddim25") == {"sampler": "dpmpp2m", "steps": "ddim25"}
    assert ablate.parse_setting("ddpm:25:5") == {"sampler": "ddpm", "steps": "25", "guidance": 5.0}
    for bad in ("ddpm", "ddpm:", ":25", "ddpm:25:5:1"):
        with pytest.raises(SystemExit, match="SAMPLER:STEPS"):
            ablate.parse_setting(bad)


def test_ablation_curve_takes_every_nth_step_checkpoint_in_order(tmp_path):
    folder = tmp_path / "pretrain-synthetic" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("step-0001500.ckpt", "step-0000500.ckpt", "step-0001000.ckpt", "last.ckpt", "final.ckpt"):
        (folder / name).touch()
    assert [s for s, _ in ablate.checkpoints(tmp_path, 500)] == [500, 1000, 1500]
    assert [p.name for _, p in ablate.checkpoints(tmp_path, 1000)] == ["step-0001000.ckpt"]
    assert ablate.checkpoints(tmp_path, 0) == []


def test_colour_cast_splits_a_tint_from_pixel_noise():
    grey = torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8)
    tint = torch.tensor([0.05, 0.0, -0.05]).view(1, 3, 1, 1)
    parts = colour_cast.decompose(grey + tint)
    assert parts["spread"] == pytest.approx(0.1) and parts["tint"] == pytest.approx(0.1)
    assert parts["without_tint"] == pytest.approx(0.0, abs=1e-6)
    noise = torch.zeros(2, 3, 8, 8)
    noise[:, 0] = 0.1 * ((torch.arange(8)[:, None] + torch.arange(8)) % 2 * 2 - 1)  # red +-0.1, mean 0
    parts = colour_cast.decompose(grey + noise)
    assert parts["tint"] == pytest.approx(0.0, abs=1e-6) and parts["without_tint"] == pytest.approx(0.1)


def test_data_ocr_reads_back_a_shards_images_by_transcript(tmp_path):
    from glyphgen.data.build import build
    from glyphgen.ocr import Ocr

    out = tmp_path / "words"
    values = {"out": str(out), "resolution": 64, "count": 6, "workers": 0, "shard_size": 6}
    build("synthetic", files=[REPO / "configs/shards/words32.yaml"], values=values)  # capitals
    readings = data_ocr.read_back(next(out.glob("*.tar")), 4, Ocr())
    assert sum(len(r) for r in readings.values()) == 4  # only the first 4 samples
    assert all(text.isupper() for text in readings)
    # Large plain capitals: the OCR reads most of them back exactly.
    assert sum(got == text for text, r in readings.items() for got in r) >= 2
