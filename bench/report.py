"""Reporting for `bench/run.py`: aligned text tables, the data-headroom line, run metadata."""

from __future__ import annotations

import math
import os
import platform
import time

import torch

HEADROOM = 3
"""Loader images/s over the model's fwd+bwd images/s that keeps training from waiting on data."""


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, list):
        return "..".join(map(fmt, v))
    return str(v)


def table(rows: list[dict]) -> str:
    """`rows` as a text table, a column per key (first-seen order): numbers right-aligned, text left."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(line[i]) for line in cells)) for i, k in enumerate(keys)]
    numeric = [
        any(isinstance(row.get(k), int | float | list) and not isinstance(row.get(k), bool) for row in rows)
        for k in keys
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(keys), line(["-" * w for w in widths]), *map(line, cells)])


def print_tables(section: str, device: str, rows: list[dict]) -> None:
    """One table per kind of row (its "bench" field) in the section."""
    for bench in dict.fromkeys(row["bench"] for row in rows):
        print(f"\n{section}: {bench} ({device})")
        print(
            table([{k: v for k, v in row.items() if k != "bench"} for row in rows if row["bench"] == bench])
        )


def workers_for_headroom(
    loader_per_worker: float, model_images_per_s: float, headroom: float = HEADROOM
) -> int:
    return math.ceil(headroom * model_images_per_s / loader_per_worker)


def headroom_line(data_rows: list[dict], model_rows: list[dict], main: str) -> str | None:
    """Loader workers that feed `HEADROOM`x the fastest fwd+bwd variant of `main` with weave attention
    (the trained model), or None when either figure is missing."""
    loaders = [r for r in data_rows if r["bench"] == "loader decode+tokenize"]
    models = [
        r for r in model_rows if r["bench"] == "fwd+bwd" and r["model"] == main and r["attention"] == "weave"
    ]
    if not loaders or not models:
        return None
    loader, model = loaders[0], max(models, key=lambda r: r["images_per_s"])
    workers = workers_for_headroom(loader["images_per_s"], model["images_per_s"])
    return (
        f"data headroom: {main} ({model['variant']}) fwd+bwd {fmt(model['images_per_s'])} images/s; loader "
        f"{fmt(loader['images_per_s'])} images/s per worker -> {workers} loader worker(s) for {HEADROOM}x"
    )


def metadata(args) -> dict:
    meta = {
        "device": args.kind,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "precision": "bf16 autocast" if args.kind == "cuda" else "fp32",
        "quick": args.quick,
    }
    if args.kind == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(args.device)
    return meta
