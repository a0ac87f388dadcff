"""`make bench`: glyphgen's speed and memory figures, printed as tables and saved as JSON.

Sections (--only, comma-separated; default all three):
  data      synthetic render images/s per worker at 64/128/256 px, the streaming loader's
            images/s per worker with PNG decode + tokenization, and real-image transcription (OCR)
            images/s per core at 128/256 px with the core-hours a million images need.
  model     forward+backward images/s per model size and text-attention mode (weave, glide, none)
            at equal batch; achieved FLOP/s and MFU; memory (CUDA: peak allocated bytes; CPU: the
            activation bytes autograd saves for backward, per image); and weave vs GLIDE activation
            memory of a single attention layer.
  sampling  images/s of 50-step DDIM with classifier-free guidance 3, for a base and a superres
            model (random weights: the speed does not depend on them).

FLOPs: one forward pass is counted with torch's FlopCounterMode (a multiply-add is 2 FLOPs) and
forward+backward is taken as 3x that, the usual convention (the backward pass computes gradients
for both inputs and weights, ~2x the forward). MFU = achieved FLOP/s / the device's matmul peak,
measured once per run as the median rate of a large square matmul (bf16 on CUDA, fp32 on CPU).

On CUDA everything runs under bf16 autocast, and the model bench measures each configuration in
four variants: eager, channels_last, compile, compile+channels_last. On CPU it is fp32 and eager
only (so `make bench` stays a few minutes) unless --variants says otherwise.

Every figure is the median of several runs after warm-up; the spread (slowest..fastest run) is in
the JSON, `bench/results/<section>-<device>.json`. When data and model both run, a last line says
how many loader workers feed 3x (`report.HEADROOM`) the main model's fwd+bwd rate.

Usage: python bench/run.py [--only data,model,sampling] [--device cpu|cuda] [--quick]
                           [--variants eager,channels_last,compile,compile+channels_last]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from report import headroom_line, metadata, print_tables

from glyphgen.perf import matmul_peak, on_cuda, sync, timed

RESULTS = Path(__file__).parent / "results"
MODES = ("weave", "glide", "none")
VARIANTS = ("eager", "channels_last", "compile", "compile+channels_last")
MAIN_MODEL = {"cpu": "tiny", "cuda": "base64"}
MODEL_BATCHES = {"cpu": {"tiny": 8, "base64": 2}, "cuda": {"tiny": 64, "base64": 64, "base128": 16}}
SAMPLING_BATCHES = {"cpu": {"tiny": 4, "tiny-sr": 2}, "cuda": {"base64": 64, "base128": 64, "sr256": 16}}


def per_second(count: int, t: dict) -> dict:
    """`count` images per run of `timed`'s result as images/s: the median and the spread."""
    return {"images_per_s": count / t["median_s"], "spread": [count / t["max_s"], count / t["min_s"]]}


def autocast(device: str):
    """bf16 autocast on CUDA (as the GPU stages train with bf16-mixed); fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda(device) else contextlib.nullcontext()


# -- data ---------------------------------------------------------------------------------------------


def render_rate(resolution: int, count: int, repeats: int = 3) -> dict:
    """Synthetic samples (render + PNG encode) per second in this process, i.e. per worker."""
    from glyphgen.config import load_config
    from glyphgen.data.synthetic import SyntheticBuilder, SyntheticConfig

    builder = SyntheticBuilder(
        load_config(SyntheticConfig, values={"resolution": resolution, "count": count})
    )
    builder.prepare(workers=1)
    builder.setup()  # what a build's worker process does before its first sample
    indices = iter(range(10**9))  # fresh samples every run
    t = timed(lambda: [builder.make_sample(next(indices)) for _ in range(count)], repeats)
    return {"bench": "synthetic render", "resolution": resolution, **per_second(count, t)}


def loader_rate(count: int, repeats: int = 3) -> dict:
    """Images per second through the streaming loader (tar read, PNG decode, tokenize, batch of 64)
    with no worker processes, i.e. per worker, over 4 shards of `count` synthetic 64 px samples."""
    from glyphgen.config import load_config
    from glyphgen.data import synthetic
    from glyphgen.data.loader import LoaderConfig, make_loader

    with tempfile.TemporaryDirectory() as tmp:
        values = {"resolution": 64, "count": 4 * count, "shard_size": count, "out": f"{tmp}/s", "workers": 2}
        synthetic.build_synthetic_shards(load_config(synthetic.SyntheticConfig, values=values))
        cfg = LoaderConfig(
            shards=f"{tmp}/s", resolution=64, batch_size=64, num_workers=0, shuffle_buffer=1000
        )
        loader = make_loader(cfg)
        t = timed(lambda: sum(1 for _ in loader), repeats)
        return {
            "bench": "loader decode+tokenize",
            "resolution": 64,
            **per_second(len(loader) * cfg.batch_size, t),
        }


def transcribe_rate(resolution: int, count: int, repeats: int = 3) -> dict:
    """Real images transcribed per second by one worker on one core (an OCR engine with one thread):
    demo photographs with text composed at `resolution` px, JPEG-encoded as a WebDataset would hold
    them, through the real-image builder's per-image step (decode, OCR, fit, PNG). Also the
    core-hours a million such images need."""
    import io

    from glyphgen.config import load_config
    from glyphgen.data.demo import Composer, DemoRealConfig
    from glyphgen.data.fonts import discover_fonts
    from glyphgen.data.real import RealBuilder, RealConfig, RealTask
    from glyphgen.text.alphabet import DEFAULT_ALPHABET

    demo = load_config(DemoRealConfig, values={"resolution": 64, "compose_size": max(64, resolution)})
    composer = Composer(demo, discover_fonts(demo.fonts, DEFAULT_ALPHABET))
    tasks = []
    for i in range(count):
        made = composer.compose(i)
        if made is not None:
            buffer = io.BytesIO()
            made[0].convert("RGB").resize((resolution, resolution)).save(buffer, "JPEG", quality=90)
            tasks.append(RealTask(i, source=f"bench {i}", data=buffer.getvalue()))
    with tempfile.TemporaryDirectory() as tmp:
        values = {"images": tmp, "out": f"{tmp}/out", "resolution": 64, "ocr": {"threads": 1}}
        builder = RealBuilder(load_config(RealConfig, values=values))
        builder.setup()
        builder.make_sample(tasks[0])  # the engine loads on first use: not timed
        t = timed(lambda: [builder.make_sample(task) for task in tasks], repeats)
    rate = per_second(len(tasks), t)
    core_hours = 1e6 / rate["images_per_s"] / 3600
    return {"bench": "real-image transcription (1 core)", "resolution": resolution, **rate,
            "core_hours_per_million": core_hours}  # fmt: skip


def bench_data(args) -> list[dict]:
    count = 300 if args.quick else 2000
    ocr_count = 10 if args.quick else 40
    return [
        *(render_rate(res, count) for res in (64, 128, 256)),
        loader_rate(count),
        *(transcribe_rate(res, ocr_count) for res in (128, 256)),
    ]


# -- model --------------------------------------------------------------------------------------------


def saved_bytes(fn, module: torch.nn.Module) -> int:
    """Bytes autograd keeps for backward while `fn` runs, parameters excluded: activation memory.
    A storage saved by several operations (or as several views) is counted once."""
    seen = {p.untyped_storage().data_ptr() for p in module.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def to_layout(x: torch.Tensor, device: str, channels_last: bool) -> torch.Tensor:
    return x.to(device, memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x.to(device)


def fwd_bwd(name: str, mode: str, variant: str, batch: int, device: str, repeats: int, peak: float) -> dict:
    """Forward+backward of size `name` with text attention `mode`, in `variant` (see VARIANTS), on
    random inputs with a 64-token text: images/s, FLOP/s, MFU against `peak` FLOP/s, memory."""
    from glyphgen.models.info import example_inputs, forward_flops
    from glyphgen.models.registry import model_config
    from glyphgen.models.unet import UNet

    # Compiled graphs hold the previous configuration's model (GPU memory) and count toward
    # dynamo's recompile limit, past which it silently falls back to eager.
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = dataclasses.replace(model_config(name), text_attention=mode)
    model = UNet(cfg)
    flops = forward_flops(cfg)  # per image; autocast and layout change no FLOP count
    channels_last = "channels_last" in variant
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    inputs = {k: to_layout(v, device, channels_last) for k, v in example_inputs(cfg, batch).items()}
    net = torch.compile(model) if "compile" in variant else model

    def forward():
        with autocast(device):
            return net(**inputs)

    def step():
        model.zero_grad(set_to_none=True)
        forward().float().square().mean().backward()
        sync(device)

    # A compiled model traces on its first call; the second catches any recompile.
    rate = per_second(batch, timed(step, repeats, warmup=2 if "compile" in variant else 1))
    achieved = 3 * flops * rate["images_per_s"]
    return {
        "bench": "fwd+bwd",
        "model": name,
        "attention": mode,
        "variant": variant,
        "batch": batch,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "fwd_GFLOP_per_img": flops / 1e9,
        **rate,
        "TFLOP_per_s": achieved / 1e12,
        "mfu": achieved / peak,
        **memory(step, forward, model, batch, device),
    }


def memory(step, forward, model: torch.nn.Module, batch: int, device: str) -> dict:
    """CUDA: peak allocated MiB over one more (steady-state) step: weights, grads, activations,
    workspace. CPU: MiB of activations autograd saves for backward, per image."""
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return {"peak_MiB": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"act_MiB_per_img": saved_bytes(forward, model) / batch / 2**20}


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
            kernels = sdpa_kernel(SDPBackend.MATH) if backend == "math" else contextlib.nullcontext()
            with kernels:
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


def model_rows(batches: dict[str, int], device: str, variants, repeats: int, peak: float) -> list[dict]:
    return [
        fwd_bwd(name, mode, variant, batch, device, repeats, peak)
        for name, batch in batches.items()
        for mode in MODES
        for variant in variants
    ]


def bench_model(args) -> list[dict]:
    peak = {"bench": "matmul peak", **matmul_peak(args.device)}
    rows = model_rows(
        MODEL_BATCHES[args.kind],
        args.device,
        args.variants,
        3 if args.quick else 5,
        peak["TFLOP_per_s"] * 1e12,
    )
    return [peak, *rows, *attention_memory()]


# -- sampling -----------------------------------------------------------------------------------------


def sampling_rate(
    name: str, batch: int, device: str, repeats: int, steps: int = 50, guidance: float = 3.0
) -> dict:
    """Images/s of `steps`-step DDIM with classifier-free guidance `guidance` (conditional and null
    text as one doubled batch), through `glyphgen.diffusion.sample`, for a random-init model `name`."""
    from glyphgen.diffusion import DiffusionConfig, create_diffusion, sample
    from glyphgen.models.info import example_inputs
    from glyphgen.models.registry import model_config
    from glyphgen.models.unet import UNet

    torch.manual_seed(0)
    cfg = model_config(name)
    model = UNet(cfg).to(device).eval().requires_grad_(False)
    kwargs = {k: v.to(device) for k, v in example_inputs(cfg, batch).items() if k not in ("x", "t")}
    diffusion = create_diffusion(DiffusionConfig())
    shape = (batch, cfg.in_channels, cfg.resolution, cfg.resolution)

    def net(x, t, **kw):  # float32 around the autocast network, as `Bundle.net` does
        with autocast(device):
            return model(x, t, **kw).float()

    def run(n: int):
        sample(
            net,
            diffusion,
            shape,
            sampler="ddim",
            steps=str(n),
            guidance=guidance,
            model_kwargs=kwargs,
            device=device,
        )
        sync(device)

    run(2)  # warm-up: a couple of steps warm what a whole run would, at a fraction of its cost
    t = timed(lambda: run(steps), repeats, warmup=0)
    return {
        "bench": "sampling",
        "model": name,
        "superres": cfg.superres,
        "resolution": cfg.resolution,
        "batch": batch,
        "steps": steps,
        "guidance": guidance,
        **per_second(batch, t),
    }


def bench_sampling(args) -> list[dict]:
    repeats = 2 if args.quick else 3
    return [
        sampling_rate(name, batch, args.device, repeats)
        for name, batch in SAMPLING_BATCHES[args.kind].items()
    ]


SECTIONS = {"data": bench_data, "model": bench_model, "sampling": bench_sampling}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument(
        "--variants",
        help=f"model-bench variants from {', '.join(VARIANTS)}; default: all on CUDA, eager on CPU",
    )
    args = parser.parse_args(argv)
    args.sections = args.only.split(",")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    args.kind = torch.device(args.device).type
    if args.kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}, but no CUDA GPU is available")
    args.variants = (
        args.variants.split(",") if args.variants else list(VARIANTS if args.kind == "cuda" else ["eager"])
    )
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.sections:
        results[name] = rows = SECTIONS[name](args)
        out = RESULTS / f"{name}-{args.kind}.json"
        out.write_text(json.dumps({"bench": name, **metadata(args), "rows": rows}, indent=1))
        print_tables(name, args.kind, rows)
        print(f"-> {out}", file=sys.stderr)
    line = headroom_line(results.get("data", []), results.get("model", []), MAIN_MODEL[args.kind])
    if line:
        print(f"\n{line}")


if __name__ == "__main__":
    main()
