"""`glyphgen quality`: the writing-quality run, end to end, on a wall-clock budget.

Trains a pipeline (by default `pipelines/quality-gpu.yaml`: the base64 model on synthetic text, in
bf16, on one GPU) with every stage stopped by the budget rather than a step count, exports the last
stage's EMA weights, evaluates the bundle on the held-out prompt sets and writes `quality.json` and
`quality.md` beside the runs: training throughput, the OCR metrics per set, and where the sample
grids are. Run it again and finished stages are skipped, so only the evaluation is redone.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from glyphgen.checkpoint_io import Networks, networks
from glyphgen.config import load_config, require, to_dict
from glyphgen.diffusion.options import SamplingOptions, with_options

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_budget(text: str) -> timedelta:
    """A wall-clock budget: "DD:HH:MM:SS" (Lightning's max_time format) or units such as "18m",
    "1h30m", "90s"."""
    text = str(text).strip()
    if re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", text):
        days, hours, minutes, seconds = (int(p) for p in text.split(":"))
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"budget {text!r}: write DD:HH:MM:SS or a duration such as 18m, 1h30m, 90s")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def max_time(budget: timedelta) -> str:
    """A budget as Lightning's max_time string "DD:HH:MM:SS" (whole seconds, at least one)."""
    total = max(1, round(budget.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


@dataclass
class QualityConfig(SamplingOptions):
    pipeline: str = "pipelines/quality-gpu.yaml"
    """The pipeline to train; its last stage's model is exported and evaluated."""
    name: str | None = None
    """Run name (default: the pipeline's); runs go to RUN_ROOT/NAME/. One per variant compared."""
    budget: str = "18m"
    """Wall-clock training budget of each stage: DD:HH:MM:SS or a duration such as 18m, 90s."""
    overrides: list[str] = field(default_factory=list)
    """Stage-config dotlist overrides for every stage, e.g. model.text_attention=glide."""
    prompt_sets: list[str] = field(default_factory=lambda: ["words", "random", "posts"])
    """Prompt sets to evaluate on: shipped names (words, random, posts) or prompt files."""
    max_prompts: int | None = None
    """Evaluate only the first this many prompts of each set (None: all)."""
    n: int = 4
    """Samples per prompt."""
    batch_size: int = 64
    """Images sampled at once."""
    weights: Networks = Networks.ema
    """Which network of the last stage to export and score: "ema" (the bundle's default), "raw" (the
    trained weights, `bundle-raw/`, rows marked "(raw)") or "both": a short run's average may lag."""
    device: str | None = None
    """"cpu" or "cuda" for the evaluation (default: cuda when available)."""

    def __post_init__(self):
        super().__post_init__()
        try:
            parse_budget(self.budget)
        except ValueError as e:
            require(False, "budget", str(e))
        require(bool(self.prompt_sets), "prompt_sets", "names no prompt set")
        self.weights = Networks.parse(self.weights, "weights")
        require(self.max_prompts is None or self.max_prompts > 0, "max_prompts", "must be > 0")
        require(self.n > 0, "n", f"must be > 0, got {self.n}")


def stage_throughput(run_dir: Path) -> dict[str, Any]:
    """What a finished stage's `complete.json` says about its steps and training speed."""
    from glyphgen.training.train import COMPLETE

    record = json.loads((run_dir / COMPLETE).read_text())
    keys = ("step", "world_size", "segment_seconds", "segment_images", "images_per_second")
    return {k: record.get(k) for k in keys}


def train_flops_per_image(stage_config: Path) -> float:
    """Training FLOPs per image of a stage's model: three forward passes' worth (forward + backward),
    counted on the meta device so no memory or time is spent on real tensors."""
    from glyphgen.models.info import forward_flops
    from glyphgen.training.config import StageConfig
    from glyphgen.training.core import build_model_config

    return 3.0 * forward_flops(build_model_config(load_config(StageConfig, [stage_config])))


def run_quality(cfg: QualityConfig, command: str | None = None) -> dict[str, Any]:
    """Train, export, evaluate; returns the report (also written to RUN/quality.json and .md)."""
    import torch

    from glyphgen.eval.prompts import prompt_file, read_prompts
    from glyphgen.inference.bundle import load_bundle
    from glyphgen.inference.export import export_bundle
    from glyphgen.perf import matmul_peak
    from glyphgen.training.pipeline import load_pipeline, run_pipeline, stage_run_dir
    from glyphgen.training.train import final_checkpoint

    renamed = [f"name={cfg.name}"] if cfg.name else []
    pipeline = load_pipeline(cfg.pipeline, renamed)
    prompt_sets = {prompt_file(s).stem: read_prompts(s)[: cfg.max_prompts] for s in cfg.prompt_sets}
    run = Path(pipeline.run_root) / pipeline.name
    budget = max_time(parse_budget(cfg.budget))

    # Measured first, on an idle device: after training, loader workers may still hold the CPU.
    peak = matmul_peak("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    run_pipeline(cfg.pipeline, [*cfg.overrides, f"trainer.max_time={budget}"], pipeline_overrides=renamed)
    pipeline_seconds = time.perf_counter() - start
    stages = {}
    for stage in pipeline.stages:
        stage_dir = stage_run_dir(pipeline, stage)
        info = stage_throughput(stage_dir)
        rate = info["images_per_second"]
        tflops = rate * train_flops_per_image(stage_dir / "config.yaml") / 1e12 if rate else None
        info["train_tflops_per_second"] = tflops
        # Per device: the stage's images/s counts every rank.
        info["mfu"] = tflops / (info["world_size"] or 1) / peak["TFLOP_per_s"] if tflops else None
        stages[stage.name] = info

    last = stage_run_dir(pipeline, pipeline.stages[-1])
    evaluations, bundles = {}, {}
    for weights in networks(cfg.weights):
        suffix = "" if weights == "ema" else f"-{weights}"
        bundle_dir = export_bundle(
            final_checkpoint(last), run / f"bundle{suffix}", overwrite=True, weights=weights
        )
        bundles[weights] = str(bundle_dir)
        bundle = load_bundle(bundle_dir, cfg.device)
        for name, prompts in prompt_sets.items():
            report = bundle.evaluate(prompts, cfg.n, with_options(cfg))
            json_path, grid = report.save(run / f"eval{suffix}" / name)
            label = name if weights == "ema" else f"{name} ({weights})"
            print(f"[quality] {label}: {report.summary()}")
            evaluations[label] = {
                "images": len(report.samples),
                "metrics": report.metrics,
                "report": str(json_path),
                "grid": str(grid),
            }

    result = {
        "command": command or shlex.join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "config": to_dict(cfg),
        "budget_per_stage": budget,
        "matmul_peak": peak,
        "pipeline_seconds": round(pipeline_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "stages": stages,
        "bundles": bundles,
        "sampling": dataclasses.asdict(bundle.options(with_options(cfg))),
        "evaluations": evaluations,
        "report": str(run / "quality.md"),
    }
    (run / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "quality.md").write_text(markdown(result))
    return result


def machine() -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "device": gpu or f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def markdown(result: dict[str, Any]) -> str:
    """The report as the Markdown that goes into BENCHMARKS.md."""
    peak = result["matmul_peak"]
    lines = [
        f"Quality run, {result['date']}, {result['machine']['device']}, torch {result['machine']['torch']}",
        "",
        f"    {result['command']}",
        "",
        f"Budget {result['budget_per_stage']} per stage; {result['total_seconds']:.0f} s in all "
        f"({result['pipeline_seconds']:.0f} s building shards and training). MFU per device against "
        f"the measured {peak['dtype']} matmul peak, {peak['TFLOP_per_s']:.3g} TFLOP/s.",
        "",
        "| stage | steps | images/s (wall clock) | train TFLOP/s | MFU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in result["stages"].items():
        rate, tflops, mfu = s["images_per_second"], s["train_tflops_per_second"], s["mfu"]
        lines.append(f"| {name} | {s['step']} | {rate or 0:,.1f} | {tflops or 0:.2f} | {mfu or 0:.3f} |")
    lines += [
        "",
        f"Sampling: {json.dumps(result['sampling'])}",
        "",
        "| prompt set | images | CER | exact transcript | exact line | trigram similarity | channel spread | grid |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in result["evaluations"].items():
        m = e["metrics"]
        lines.append(
            f"| {name} | {e['images']} | {m['cer']:.3f} | {m['exact_transcript']:.3f} | "
            f"{m['exact_line']:.3f} | {m['trigram_similarity']:.3f} | {m['channel_spread']:.3f} | {e['grid']} |"
        )
    return "\n".join(lines) + "\n"
