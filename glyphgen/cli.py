"""The `glyphgen` command: a thin layer over the Python API.

Every verb takes `--config FILE` (repeatable, merged in order), a few common options, and trailing
OmegaConf dotlist overrides (`render.line_spacing=[1.0,1.4]`). A user mistake prints one line,
`glyphgen: error: ...`, and exits with status 2; set GLYPHGEN_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from glyphgen.checkpoint_io import NETWORKS, Networks
from glyphgen.config import ConfigError, load_config
from glyphgen.diffusion.options import SamplingOptions
from glyphgen.diffusion.schedule import Sampler
from glyphgen.models.registry import MODELS, model_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotlist overrides, applied last")


def _shard_args(p: argparse.ArgumentParser, random: bool = True) -> None:
    """Options common to shard builds; `random` ones (count, seed) only where samples are generated."""
    _config_args(p)
    p.add_argument("--out", help="output shard folder")
    p.add_argument("--resolution", type=int, help="image side in pixels")
    if random:
        p.add_argument("--count", type=int, help="number of samples")
        p.add_argument("--seed", type=int, help="sample i depends on (seed, i) alone")
    p.add_argument("--workers", type=int, help="worker processes (0: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that already holds shards")
    p.add_argument("--preview", type=Path, metavar="PNG", help="also write a grid of samples to look at")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glyphgen", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    fonts = verbs.add_parser("fonts", help="list usable fonts and their character coverage")
    _config_args(fonts)
    fonts.add_argument("--font-dir", action="append", default=[], help="extra folder to scan")

    shards = verbs.add_parser("make-shards", help="build WebDataset shards")
    kinds = shards.add_subparsers(dest="kind", required=True)
    _shard_args(kinds.add_parser("synthetic", help="text drawn in real fonts on flat backgrounds"))
    real = kinds.add_parser("real", help="your images, with sidecar/manifest transcripts or OCR")
    _shard_args(real, random=False)
    src = real.add_mutually_exclusive_group()
    src.add_argument("--images", help="folder of images (optional NAME.txt transcript beside each)")
    src.add_argument("--manifest", help='JSONL file of {"image": path, "text": optional}')
    src.add_argument(
        "--webdataset",
        metavar="SPEC",
        help="img2dataset WebDataset tars: a path, a brace pattern (shards/{00000..00009}.tar) or a "
        "pipe:/URL pattern; captions are kept as metadata, transcripts come from the OCR",
    )
    real.add_argument(
        "--part",
        metavar="I/N",
        help="with --webdataset: transcribe part I of N (every N-th input shard from I); "
        "resumes where a killed run stopped, skips a finished part",
    )
    _shard_args(kinds.add_parser("demo-real", help="the embedded demo set: real photos composed with text"))

    merge = verbs.add_parser(
        "merge-shards", help="combine finished `make-shards real --part` folders into one shard folder"
    )
    merge.add_argument("out", help="new shard folder to write")
    merge.add_argument("parts", nargs="+", metavar="PART_DIR", help="finished part folders")
    merge.add_argument("--overwrite", action="store_true", help="replace a shard folder glyphgen wrote")
    merge.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep an image (same json image_hash) that an earlier part already holds; by default "
        "only its first copy is kept",
    )

    train = verbs.add_parser("train", help="train one stage from a stage config")
    _config_args(train)
    train.add_argument("--run-dir", required=True, help="run folder (resumes from its last.ckpt if present)")

    pipe = verbs.add_parser(
        "pipeline", help="run a chain of stages (skips finished ones, resumes interrupted ones)"
    )
    pipe.add_argument("pipeline", help="pipeline YAML, e.g. pipelines/tiny.yaml")
    pipe.add_argument("--stage", help="run only this stage (its warm-start source must be finished)")
    pipe.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="pipeline overrides (run_root=...)"
    )
    pipe.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="stage config overrides, for every stage"
    )

    info = verbs.add_parser("model-info", help="parameters and forward FLOPs of a model size")
    info.add_argument("size", help=f"a named size ({', '.join(MODELS)}) or a model YAML")
    info.add_argument("--text-length", type=int, default=64, help="text tokens in the FLOP count")
    info.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="model config overrides")

    check = verbs.add_parser("check-shards", help="read every shard once and report what it really holds")
    check.add_argument("shards", help="shard folder or URL pattern")
    _config_args(check)  # after the folder: `check-shards DIR key=val` gives DIR to `shards`

    export = verbs.add_parser(
        "export", help="stage checkpoint -> inference bundle (safetensors + config.yaml)"
    )
    export.add_argument(
        "checkpoint", help="a stage checkpoint, e.g. runs/tiny/superres/checkpoints/final.ckpt"
    )
    export.add_argument("--out", required=True, help="bundle folder to write")
    export.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="weight dtype")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    export.add_argument(
        "--weights",
        choices=list(NETWORKS),
        default="ema",
        help="the EMA average (default) or the raw network",
    )

    sample = verbs.add_parser(
        "sample",
        help="write a prompt into images",
        description="Sample images of a prompt (type \\n for a new line). --out: a PATH ending in .png "
        "is the image (n=1) or the name pattern for several (x.png -> x-0.png, x-1.png, ...); any other "
        "PATH is a folder that receives sample-0.png, ... With --rerank one image is written (a folder "
        "gets best.png) and a JSON of every candidate beside it.",
    )
    sample.add_argument("text", help="the prompt; \\n starts a new line")
    sample.add_argument("--base", required=True, help="base model bundle folder")
    sample.add_argument(
        "--superres",
        action="append",
        default=[],
        help="super-resolution bundle folder: upsample the base samples; repeat for more stages, in order",
    )
    sample.add_argument("--out", required=True, help="PNG path, or folder (see above)")
    sample.add_argument("--overwrite", action="store_true", help="replace images (and JSON) already there")
    _sampling_args(sample, n=1)
    sample.add_argument(
        "--sr-guidance", type=float, help="guidance of every superres stage (default: each bundle's)"
    )
    sample.add_argument("--rerank", action="store_true", help="OCR rejection sampling: keep the best of --n")
    sample.add_argument(
        "--rerank-high", type=float, help="keep only candidates scoring at least this, if any"
    )
    sample.add_argument("--rerank-low", type=float, help="else drop candidates scoring below this")
    sample.add_argument("--rerank-keep", type=int, help="upsample at most this many survivors (0: all)")

    evaluate = verbs.add_parser(
        "evaluate", help="OCR metrics of a bundle on a prompt set, and a labelled grid"
    )
    evaluate.add_argument("bundle", help="base model bundle folder")
    evaluate.add_argument(
        "--prompts", required=True, help="prompt file (one per line, \\n = new line), or words, random, posts"
    )
    evaluate.add_argument(
        "--superres",
        action="append",
        default=[],
        help="also upsample with this bundle and score the cascade; repeat for more stages, in order",
    )
    evaluate.add_argument(
        "--sr-guidance", type=float, help="guidance of every superres stage (default: each bundle's)"
    )
    evaluate.add_argument("--out", type=Path, help="report folder (default: runs/eval/BUNDLE-PROMPTS)")
    _sampling_args(evaluate, n=2)

    quality = verbs.add_parser(
        "quality", help="the quality run: train a pipeline on a time budget, export, evaluate"
    )
    quality.add_argument("--pipeline", help="pipeline YAML (default pipelines/quality-gpu.yaml)")
    quality.add_argument("--name", help="run name (default: the pipeline's): one per variant compared")
    quality.add_argument(
        "--budget", help="training wall clock per stage: 18m, 90s, DD:HH:MM:SS (default 18m)"
    )
    quality.add_argument(
        "--prompts", nargs="+", dest="prompt_sets", help="prompt sets (default: words random posts)"
    )
    quality.add_argument("--max-prompts", type=int, help="evaluate the first K prompts of each set")
    quality.add_argument("--weights", choices=Networks.values(), help="which network to score (default: ema)")
    _sampling_args(quality, n=4)
    quality.set_defaults(batch_size=64)
    quality.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="stage config overrides, e.g. model.text_attention=glide",
    )
    return parser


SAMPLING_OPTIONS = [f.name for f in dataclasses.fields(SamplingOptions)]
"""The `SamplingOptions` fields every sampling verb takes as options."""


def _sampling_args(p: argparse.ArgumentParser, n: int) -> None:
    p.add_argument("--n", type=int, default=n, help=f"images per prompt (default {n})")
    p.add_argument("--seed", type=int, default=0, help="same seed, n and batch size: same images")
    p.add_argument(
        "--steps", help="sampling steps, e.g. 50, ddim25 or 90,60,60,20,20 (default: the bundle's)"
    )
    p.add_argument("--sampler", choices=Sampler.values(), help="default: the bundle's")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the bundle's)")
    p.add_argument("--guidance-rescale", type=float, help="CFG rescale phi in [0, 1] (default: the bundle's)")
    p.add_argument(
        "--threshold",
        type=float,
        help="0: clip x0 to [-1, 1]; a quantile such as 0.995: dynamic thresholding",
    )
    p.add_argument("--eta", type=float, help="DDIM stochasticity, 0 deterministic (default: the bundle's)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--batch-size", type=int, default=8, help="images sampled at once")


def _options(args: argparse.Namespace):
    return load_config(SamplingOptions, values=_values(args, SAMPLING_OPTIONS))


def _values(args: argparse.Namespace, names: list[str]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_fonts(args) -> None:
    from glyphgen.data.fonts import FontConfig, discover_fonts, format_font_table
    from glyphgen.text.alphabet import DEFAULT_ALPHABET

    cfg = load_config(FontConfig, args.config, args.overrides, values={"font_dirs": args.font_dir or None})
    print(format_font_table(discover_fonts(cfg, DEFAULT_ALPHABET), DEFAULT_ALPHABET))


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Before any work: files the command would write must not exist, unless --overwrite."""
    for path in paths:
        if path.is_dir() or (path.exists() and not overwrite):
            what = "is a folder" if path.is_dir() else "exists; pass --overwrite to replace it"
            raise FileExistsError(f"{path}: {what}")


def cmd_make_shards(args) -> None:
    from glyphgen.data.build import build

    refuse_existing([args.preview] if args.preview else [], args.overwrite)
    names = ["out", "resolution", "count", "workers", "seed", "images", "manifest", "webdataset", "part"]
    report = build(args.kind, args.config, args.overrides, _values(args, names), args.overwrite, args.preview)
    print(report.out)


def cmd_merge_shards(args) -> None:
    from glyphgen.data.merge import merge_parts

    merged = merge_parts(args.out, args.parts, args.overwrite, drop_duplicates=not args.keep_duplicates)
    print(f"merged {len(merged['parts'])} parts: {merged['count']} samples in {len(merged['shards'])} shards")
    print(args.out)


def cmd_check_shards(args) -> None:
    from glyphgen.data.check import check_shards
    from glyphgen.data.loader import LoaderConfig

    print(
        check_shards(load_config(LoaderConfig, args.config, args.overrides, values={"shards": args.shards}))
    )


def cmd_model_info(args) -> None:
    import torch

    from glyphgen.models.info import model_info
    from glyphgen.models.unet import UNet, UNetConfig

    if args.size in MODELS:
        cfg = load_config(UNetConfig, overrides=args.overrides, defaults=model_config(args.size))
    else:
        cfg = load_config(UNetConfig, [args.size], args.overrides)
    with torch.device("cpu"):
        info = model_info(UNet(cfg), args.text_length)
    width = max(map(len, info))
    for key, value in info.items():
        shown = (
            f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        )
        print(f"{key:<{width}}  {shown}")


def cmd_train(args) -> None:
    from glyphgen.training.config import StageConfig
    from glyphgen.training.core import build_model_config
    from glyphgen.training.pipeline import ensure_shards
    from glyphgen.training.train import train_stage

    cfg = load_config(StageConfig, args.config, args.overrides)
    ensure_shards(cfg, build_model_config(cfg).resolution)
    print(train_stage(cfg, args.run_dir))


def cmd_pipeline(args) -> None:
    from glyphgen.training.pipeline import run_pipeline

    for final in run_pipeline(args.pipeline, args.overrides, only=args.stage, pipeline_overrides=args.set):
        print(final)


def cmd_export(args) -> None:
    from glyphgen.inference.export import export_bundle

    print(export_bundle(args.checkpoint, args.out, args.dtype, args.overwrite, args.weights))


def _cascade(args, base_path: str):
    from glyphgen.inference.bundle import load_bundle
    from glyphgen.inference.cascade import Cascade

    base = load_bundle(base_path, args.device)
    superres = [load_bundle(path, args.device) for path in args.superres]
    return Cascade(base, superres, args.sr_guidance)


class _Bars:
    """One progress bar per sampling stage ("base", "superres", ...), all closed at the end."""

    def __init__(self):
        self.bars: list = []

    def __call__(self, stage: str):
        from glyphgen.inference.progress import ProgressBar

        self.close()  # the previous stage is done: one bar on screen at a time
        self.bars.append(ProgressBar(stage))
        return self.bars[-1]

    def close(self) -> None:
        for bar in self.bars:
            bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_paths(out: Path, n: int, rerank: bool = False) -> list[Path]:
    """Where `glyphgen sample` writes n images, or with `rerank` the best one and its JSON (see its
    --help)."""
    if rerank:
        best = out if out.suffix.lower() == ".png" else out / "best.png"
        return [best, best.with_suffix(".json")]
    if out.suffix.lower() == ".png":
        width = len(str(n - 1))
        return [out] if n == 1 else [out.with_name(f"{out.stem}-{i:0{width}d}.png") for i in range(n)]
    return [out / f"sample-{i}.png" for i in range(n)]


def cmd_sample(args) -> None:
    from glyphgen.eval.prompts import unescape_newlines
    from glyphgen.inference.sample import check_prompts, to_pil

    text = unescape_newlines(args.text)
    paths = sample_paths(Path(args.out), args.n, args.rerank)
    refuse_existing(paths, args.overwrite)
    options = _options(args)
    cascade = _cascade(args, args.base)
    check_prompts([text], cascade.base.tokenizer)  # before any model runs: a typo costs nothing
    with _Bars() as progress:
        common = dict(n=args.n, options=options, progress=progress)
        if args.rerank:
            from glyphgen.inference.rerank import RerankConfig, rerank

            limits = {"high": args.rerank_high, "low": args.rerank_low, "max_keep": args.rerank_keep}
            result = rerank(text, cascade, config=load_config(RerankConfig, values=limits), **common)
            for path in result.save(paths[0]):
                print(path)
            return
        images = cascade.sample([text], **common)
    for picture, path in zip(to_pil(images), paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
        print(path)


def cmd_evaluate(args) -> None:
    from glyphgen.eval.prompts import prompt_file, read_prompts

    prompts = read_prompts(args.prompts)
    options = _options(args)
    cascade = _cascade(args, args.bundle)
    out = (
        args.out
        or Path("runs") / "eval" / f"{Path(args.bundle).resolve().name}-{prompt_file(args.prompts).stem}"
    )
    with _Bars() as progress:
        report = cascade.evaluate(prompts, args.n, options, progress=progress)
    for path in report.save(out):
        print(path)
    print(report.summary())


def cmd_quality(args) -> None:
    from glyphgen.eval.quality import QualityConfig, run_quality

    names = [
        "pipeline",
        "name",
        "budget",
        "prompt_sets",
        "max_prompts",
        "n",
        "weights",
        "device",
        "overrides",
    ]
    cfg = load_config(QualityConfig, values=_values(args, names + SAMPLING_OPTIONS))
    print(run_quality(cfg)["report"])


COMMANDS = {
    "export": cmd_export,
    "sample": cmd_sample,
    "evaluate": cmd_evaluate,
    "quality": cmd_quality,
    "train": cmd_train,
    "pipeline": cmd_pipeline,
    "model-info": cmd_model_info,
    "fonts": cmd_fonts,
    "make-shards": cmd_make_shards,
    "merge-shards": cmd_merge_shards,
    "check-shards": cmd_check_shards,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line. argparse fills a trailing `KEY=VALUE ...` positional only up to the
    first option, so overrides written after an option come back unrecognised: they join the
    overrides, in order. Anything else unrecognised is still an error."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        COMMANDS[args.verb](args)
    except (
        ConfigError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
        RuntimeError,
        TimeoutError,
    ) as e:
        if os.environ.get("GLYPHGEN_DEBUG"):
            raise
        print(f"glyphgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glyphgen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
