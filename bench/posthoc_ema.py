"""Which weight average samples best? Averages of one run's raw weights, computed after training.

A run saved with `trainer.checkpoint_every_n_steps=50` keeps the raw (trained) weights every 50
steps. From those snapshots this script rebuilds weight averages that the run never kept, and writes
one bundle per average, so the averaging can be chosen by the OCR score without retraining
(Karras et al. 2024 do the same with their post-hoc EMA):

    python bench/posthoc_ema.py runs/ema-seed1/pretrain-synthetic/checkpoints --at 2000 \
        --out runs/ema-seed1/posthoc2000 ema:0.998 power:3 power:2 uniform:0.5

Averages:
- `ema:D`: the training core's EMA (`ema_decay`: min(D, (1 + n) / (10 + n)) at update n, so below
  about 4,500 steps every D from 0.998 up is the same average). Between two
  snapshots the raw weights are taken as the later snapshot, so the per-step EMA is approximated
  window by window (`ema:0.998` is the shipped average: compare it with the run's own EMA, which the
  script reports as its relative distance).
- `power:G`: every snapshot weighted by its step to the power G (the weight of step t grows as t^G:
  the average covers a fixed share of the run however long it is).
- `uniform:F`: the plain mean of the snapshots in the run's last share F.
A bundle named `run-ema` holds the EMA the run itself kept at `--at`, for reference.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from glyphgen.checkpoint_io import network_state, read_checkpoint
from glyphgen.inference.export import export_bundle
from glyphgen.training.core import ema_decay


def snapshots(folder: Path, last: int) -> dict[int, Path]:
    """{step: checkpoint} for the `step-NNNNNNN.ckpt` files in `folder` up to step `last`."""
    found = {}
    for path in folder.glob("step-*.ckpt"):
        m = re.fullmatch(r"step-(\d+)\.ckpt", path.name)
        if m and 0 < int(m.group(1)) <= last:
            found[int(m.group(1))] = path
    if last not in found:
        raise SystemExit(f"{folder}: no step-{last:07d}.ckpt")
    return dict(sorted(found.items()))


def weights_of(raw: dict[int, dict], spec: str) -> dict[str, torch.Tensor]:
    """The average `spec` (see the module docstring) of the raw snapshots `raw` ({step: state})."""
    kind, _, value = spec.partition(":")
    steps = list(raw)
    if kind == "ema":
        cap, avg, done = float(value), None, 0
        for step in steps:
            keep = 1.0  # the product of the per-step decays over the window (done, step]
            for n in range(done, step):
                keep *= ema_decay(n, cap)
            state = raw[step]
            avg = (
                {k: v.clone() for k, v in state.items()}
                if avg is None
                else {
                    k: keep * avg[k] + (1 - keep) * v if v.is_floating_point() else v
                    for k, v in state.items()
                }
            )
            done = step
        return avg
    if kind == "power":
        weights = {s: (s / steps[-1]) ** float(value) for s in steps}  # scaled: 2000**12 overflows
    elif kind == "uniform":
        first = steps[-1] * (1 - float(value))
        weights = {s: 1.0 for s in steps if s > first}
    else:
        raise SystemExit(f"unknown average {spec!r}: ema:D, power:G or uniform:F")
    total = sum(weights.values())
    last = raw[steps[-1]]
    return {
        k: sum(w * raw[s][k] for s, w in weights.items()) / total if v.is_floating_point() else v
        for k, v in last.items()
    }


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |b| over all floating tensors."""
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in b if b[k].is_floating_point())
    den = sum(float(b[k].pow(2).sum()) for k in b if b[k].is_floating_point())
    return (num / den) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", type=Path)
    parser.add_argument("averages", nargs="+")
    parser.add_argument("--at", type=int, required=True, help="the last step averaged")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    found = snapshots(args.checkpoints, args.at)
    raw = {step: network_state(read_checkpoint(path), "raw") for step, path in found.items()}
    target = found[args.at]
    kept = network_state(read_checkpoint(target), "ema")
    print(f"{len(raw)} snapshots, steps {min(raw)}..{max(raw)}")
    export_bundle(target, args.out / "run-ema", overwrite=True)
    for spec in args.averages:
        avg = weights_of(raw, spec)
        name = spec.replace(":", "-")
        export_bundle(target, args.out / name, overwrite=True, state=avg)
        print(
            f"{name}: distance to the run's EMA {distance(avg, kept):.4f}, to the raw weights {distance(avg, raw[args.at]):.4f}"
        )


if __name__ == "__main__":
    main()
