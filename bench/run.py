"""`make bench`: glyphgen's speed and memory figures, printed as a table and saved as JSON.

Every timing is the median of several runs after a warm-up, with the spread (min..max).
Usage: python bench/run.py [--only data,model] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


# -- data ---------------------------------------------------------------------------------------------


def bench_data(args) -> list[dict]:
    from glyphgen.config import load_config
    from glyphgen.data import synthetic
    from glyphgen.data.fonts import discover_fonts
    from glyphgen.data.loader import LoaderConfig, make_loader

    rows = []
    n = 300 if args.quick else 2000
    for res in (64, 128, 256):
        cfg = load_config(synthetic.SyntheticConfig, values={"resolution": res, "count": n})
        synthetic.init_worker(cfg, discover_fonts(cfg.fonts, cfg.alphabet))
        indices = iter(range(10**9))
        t = timed(lambda: [synthetic.make_sample(next(indices)) for _ in range(n)], repeats=3)
        rows.append(
            {
                "bench": "synthetic render",
                "resolution": res,
                "images_per_s_per_worker": n / t["median_s"],
                "spread": [n / t["max_s"], n / t["min_s"]],
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            synthetic.SyntheticConfig,
            values={"resolution": 64, "count": 4 * n, "shard_size": n, "out": f"{tmp}/s", "workers": 2},
        )
        synthetic.build_synthetic_shards(cfg)
        lcfg = LoaderConfig(
            shards=f"{tmp}/s", resolution=64, batch_size=64, num_workers=0, shuffle_buffer=1000
        )
        loader = make_loader(lcfg)
        count = len(loader) * lcfg.batch_size
        t = timed(lambda: sum(1 for _ in loader), repeats=3)
        rows.append(
            {
                "bench": "loader decode+tokenize",
                "resolution": 64,
                "images_per_s_per_worker": count / t["median_s"],
                "spread": [count / t["max_s"], count / t["min_s"]],
            }
        )
    return rows


# -- model --------------------------------------------------------------------------------------------


def bench_model(args) -> list[dict]:
    from glyphgen.models.info import example_inputs, forward_flops
    from glyphgen.models.registry import create_model

    rows = []
    sizes = {"tiny": 8, "base64": 2} if args.device == "cpu" else {"tiny": 64, "base64": 64, "base128": 16}
    for name, batch in sizes.items():
        for mode in ("weave", "glide", "none"):
            torch.manual_seed(0)
            model = create_model(name)
            if mode != "weave":
                import dataclasses

                from glyphgen.models.unet import UNet

                model = UNet(dataclasses.replace(model.cfg, text_attention=mode))
            model.to(args.device)
            inputs = {k: v.to(args.device) for k, v in example_inputs(model.cfg, batch, 64).items()}
            flops = forward_flops(model.cpu(), 64)
            model.to(args.device)

            def step():
                model.zero_grad(set_to_none=True)
                model(**inputs).float().square().mean().backward()
                if args.device == "cuda":
                    torch.cuda.synchronize()

            t = timed(step, repeats=3 if args.quick else 5)
            per_image = t["median_s"] / batch
            rows.append(
                {
                    "bench": "fwd+bwd",
                    "model": name,
                    "text_attention": mode,
                    "batch": batch,
                    "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                    "fwd_gflops_per_image": flops / 1e9,
                    "s_per_image": per_image,
                    "images_per_s": 1 / per_image,
                    "achieved_tflops": 3 * flops / per_image / 1e12,
                    "spread_s_per_image": [t["min_s"] / batch, t["max_s"] / batch],
                }
            )
    rows += attention_memory()
    return rows


def saved_bytes(fn, module: torch.nn.Module) -> int:
    """Bytes autograd keeps for backward while `fn` runs, parameters excluded: activation memory."""
    total = 0
    params = {p.data_ptr() for p in module.parameters()}

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def attention_memory(
    res: int = 32, length: int = 128, channels: int = 128, text_dim: int = 512
) -> list[dict]:
    """Weave vs GLIDE text attention at res x res with `length` tokens (the seed predicts
    O(L*HW) vs O((L+HW)^2)), with the attention matrix materialised (math backend) as the seed's
    code did, and with PyTorch's default fused backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from glyphgen.models.attention import SelfAttention, WeaveAttention

    x = torch.randn(1, channels, res, res, requires_grad=True)
    text = torch.randn(1, length, text_dim, requires_grad=True)
    mask = torch.ones(1, length, dtype=torch.bool)
    emb = torch.randn(1, 4 * channels)
    layers = {
        "weave": (WeaveAttention(channels, text_dim, 64, 4 * channels, res), lambda m: m(x, emb, text, mask)),
        "glide": (SelfAttention(channels, 64, text_dim), lambda m: m(x, text, mask)),
        "self-attention only": (SelfAttention(channels, 64), lambda m: m(x)),
    }
    rows = []
    for backend in ("math", "default"):
        for name, (layer, call) in layers.items():
            if backend == "math":
                with sdpa_kernel(SDPBackend.MATH):
                    b = saved_bytes(lambda: call(layer), layer)
            else:
                b = saved_bytes(lambda: call(layer), layer)
            rows.append(
                {
                    "bench": "attention activation memory",
                    "layer": name,
                    "backend": backend,
                    "resolution": res,
                    "text_tokens": length,
                    "saved_MiB": b / 2**20,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="data,model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    benches = {"data": bench_data, "model": bench_model}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        rows = benches[name](args)
        record = {
            "bench": name,
            "device": args.device,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
        }
        out = RESULTS / f"{name}-{args.device}.json"
        out.write_text(json.dumps(record, indent=1))
        for row in rows:
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
