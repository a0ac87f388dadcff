"""The learning ladder's ablation table: train each recipe variant of a pipeline with the same seed and
budget (`glyphgen quality`), then score every exported bundle with the OCR under several samplers.

    python bench/ablate.py --pipeline pipelines/learn-cpu.yaml --budget 15m --device cpu --jobs 1
    python bench/ablate.py --budget 10m --device cuda --jobs 6 --set trainer.max_steps=900 trainer.precision=32

The second form ranks the variants at equal *steps* on a GPU (900 steps is what 15 CPU minutes
buy), several trainings at once. Writes bench/results/ablation-NAME.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

VARIANTS: dict[str, list[str]] = {
    "eps (before)": [],
    "v": ["diffusion.parameterization=v"],
    "eps + min-SNR": ["diffusion.loss_weighting=min_snr"],
    "x0 + min-SNR": ["diffusion.parameterization=x0", "diffusion.loss_weighting=min_snr"],
    "v + min-SNR": ["diffusion.parameterization=v", "diffusion.loss_weighting=min_snr"],
    "v + P2": ["diffusion.parameterization=v", "diffusion.loss_weighting=p2"],
    "v + min-SNR + ZTSNR": [
        "diffusion.parameterization=v",
        "diffusion.loss_weighting=min_snr",
        "diffusion.zero_terminal_snr=true",
    ],
    "v + min-SNR + localisation": [
        "diffusion.parameterization=v",
        "diffusion.loss_weighting=min_snr",
        "localisation=0.01",
    ],
    "v + min-SNR + localisation 0.1": [
        "diffusion.parameterization=v",
        "diffusion.loss_weighting=min_snr",
        "localisation=0.1",
    ],
}
SAMPLERS = ["ddim:ddim25", "dpmpp2m:ddim25", "ddpm:100"]
"""SAMPLER:STEPS[:GUIDANCE] settings each bundle is scored with (guidance: the bundle's if left out)."""


def slug(variant: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")


def parse_setting(spec: str) -> dict:
    """`dpmpp2m:ddim25` or `ddpm:25:5` -> the sampling options of one scoring pass."""
    sampler, steps, *rest = spec.split(":") + [""]
    if not sampler or not steps or len(rest) > 2:
        raise SystemExit(f"--samplers: {spec!r} is not SAMPLER:STEPS[:GUIDANCE]")
    return {"sampler": sampler, "steps": steps} | ({"guidance": float(rest[0])} if rest[0] else {})


def train(args, variant: str) -> Path:
    name = f"{args.name}-{slug(variant)}"
    command = [sys.executable, "-m", "glyphgen.cli", "quality", "--pipeline", args.pipeline]
    command += ["--budget", args.budget, "--name", name, "--prompts", args.prompts, "--max-prompts", "1"]
    command += ["--n", "1", "--steps", "ddim10", "--device", args.device]
    command += args.set + VARIANTS[variant]  # a variant may override the common settings
    log = Path("runs") / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{variant}: training failed ({code}), see {log}")
    return Path("runs") / name


def checkpoints(run: Path, every: int) -> list[tuple[int, Path]]:
    """(step, checkpoint) of every `every`-th step checkpoint the run saved (none when every is 0)."""
    found = [(int(p.stem.split("-")[1]), p) for p in run.glob("*/checkpoints/step-*.ckpt")]
    return sorted((step, p) for step, p in found if every and step % every == 0)


def score_point(run: Path, step: int | None, ckpt: Path | None, args) -> list[dict]:
    """Score one model of a run (the final bundle, or the EMA weights of the step checkpoint `ckpt`)
    under every setting of `args.samplers`. Runs in its own process: one OCR engine each."""
    from glyphgen.eval.prompts import read_prompts
    from glyphgen.inference.bundle import load_bundle
    from glyphgen.inference.export import export_bundle
    from glyphgen.ocr import Ocr
    from glyphgen.ocr.engine import OcrConfig

    where = run / "bundle" if ckpt is None else run / "curve" / f"step-{step}"
    if ckpt is not None:
        export_bundle(ckpt, where, overwrite=True)
    bundle, prompts = load_bundle(where, args.device), read_prompts(args.prompts)
    ocr = Ocr(OcrConfig(threads=args.ocr_threads))
    rows = []
    for spec in args.samplers:
        options = parse_setting(spec)
        report = bundle.evaluate(prompts, args.n, batch_size=args.batch_size, ocr=ocr, **options)
        out = where.parent / "eval" / f"{f'step-{step}-' if ckpt else ''}{spec.replace(':', '-')}"
        report.save(out)
        rows.append({"step": step, "setting": spec, "grid": str(out / "grid.png"), **report.metrics})
    return rows


def score(args, variants: list[str], runs: list[Path]) -> list[dict]:
    """Every variant's final bundle, and its step checkpoints with --every, scored in parallel."""
    results, tasks = [], []
    for variant, run in zip(variants, runs, strict=True):
        final = json.loads(next(run.glob("*/complete.json")).read_text()).get("step")
        results.append({"variant": variant, "overrides": VARIANTS[variant], "step": final, "rows": []})
        points = [(s, c) for s, c in checkpoints(run, args.every) if s != final] + [(final, None)]
        tasks += [(len(results) - 1, run, step, ckpt) for step, ckpt in points]
    # spawn, not fork: a forked child would inherit CUDA and onnxruntime state it cannot use.
    with ProcessPoolExecutor(args.score_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(i, pool.submit(score_point, run, s, c, args)) for i, run, s, c in tasks]
        for i, future in futures:
            results[i]["rows"] += future.result()
    return results


def table(results: list[dict], args) -> str:
    lines = [
        f"# Ablation: {args.name}",
        "",
        f"    python bench/ablate.py {' '.join(sys.argv[1:])}",
        "",
        "| variant | steps | sampler:steps[:guidance] | CER | exact | trigram sim. | channel spread |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in sorted(r["rows"], key=lambda row: row["step"]):
            lines.append(
                f"| {r['variant']} | {row['step']} | {row['setting']} | {row['cer']:.3f} | "
                f"{row['exact_transcript']:.3f} | {row['trigram_similarity']:.3f} | {row['channel_spread']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="pipelines/learn-cpu.yaml")
    p.add_argument("--budget", default="15m", help="wall-clock training budget per variant")
    p.add_argument("--name", default="ablation")
    p.add_argument("--prompts", default="configs/prompts/learn-words.txt")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    p.add_argument("--no-train", action="store_true", help="score the runs an earlier call trained")
    p.add_argument("--samplers", nargs="+", default=SAMPLERS, metavar="SAMPLER:STEPS[:GUIDANCE]")
    p.add_argument(
        "--every", type=int, default=0, help="also score every N-th step checkpoint: a learning curve"
    )
    p.add_argument("--score-jobs", type=int, default=1, help="models scored at once, one process each")
    p.add_argument("--ocr-threads", type=int, default=0, help="onnxruntime threads per scorer (0: all)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", nargs="*", default=[], help="stage overrides for every variant")
    p.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME:K=V,K=V",
        help="more variants, e.g. 'v lr2e-3:diffusion.parameterization=v,optim.lr=2e-3'",
    )
    args = p.parse_args()
    for spec in args.extra:
        name, _, overrides = spec.partition(":")
        VARIANTS[name] = [o for o in overrides.split(",") if o]
    args.variants = [v for v in args.variants if v in VARIANTS] + [s.partition(":")[0] for s in args.extra]
    start = time.time()
    if args.no_train:
        runs = [Path("runs") / f"{args.name}-{slug(v)}" for v in args.variants]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda v: train(args, v), args.variants))
    results = score(args, args.variants, runs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(results, args))
    print(table(results, args))
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
