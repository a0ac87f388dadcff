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
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
SAMPLERS = [("ddim", "ddim25"), ("dpmpp2m", "ddim25"), ("ddpm", "100")]
"""(sampler, steps) each bundle is scored with."""


def slug(variant: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")


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


def score(args, variant: str, run: Path) -> dict:
    from glyphgen.eval.prompts import read_prompts
    from glyphgen.inference.bundle import load_bundle

    bundle, prompts = load_bundle(run / "bundle", args.device), read_prompts(args.prompts)
    complete = json.loads(next(run.glob("*/complete.json")).read_text())
    rows = []
    for sampler, steps in SAMPLERS:
        report = bundle.evaluate(prompts, args.n, steps=steps, sampler=sampler, batch_size=args.batch_size)
        out = run / "eval" / f"{sampler}-{steps}"
        report.save(out)
        m = report.metrics
        rows.append({"sampler": sampler, "steps": steps, "grid": str(out / "grid.png"), **m})
    return {"variant": variant, "overrides": VARIANTS[variant], "step": complete.get("step"), "rows": rows}


def table(results: list[dict], args) -> str:
    lines = [
        f"# Ablation: {args.name}",
        "",
        f"    python bench/ablate.py {' '.join(sys.argv[1:])}",
        "",
        "| variant | steps | sampler | CER | exact | trigram sim. | channel spread |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in r["rows"]:
            lines.append(
                f"| {r['variant']} | {r['step']} | {row['sampler']} {row['steps']} | {row['cer']:.3f} | "
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
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda v: train(args, v), args.variants))
    results = [score(args, v, run) for v, run in zip(args.variants, runs, strict=True)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(results, args))
    print(table(results, args))
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
