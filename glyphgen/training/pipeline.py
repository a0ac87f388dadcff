"""The pipeline runner (`glyphgen pipeline pipelines/NAME.yaml`): a chain of stages run in order.

Each stage runs in `RUN_ROOT/NAME/STAGE/`; a finished stage (its `complete.json`) is skipped, an
interrupted one resumes from its `last.ckpt`, missing shards are built first, and a stage that
names `init_from` is warm-started from that earlier stage's final EMA checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from glyphgen.config import load_config, require
from glyphgen.data.build import build as build_shards
from glyphgen.data.shards import MANIFEST
from glyphgen.training.config import StageConfig
from glyphgen.training.train import final_checkpoint, is_complete, train_stage


@dataclass
class PipelineStage:
    name: str = ""
    """The stage's name: its run folder, and what later stages' `init_from` refer to."""
    config: str = ""
    """The stage config YAML."""
    overrides: list[str] = field(default_factory=list)
    """Dotlist overrides of the stage config."""
    init_from: str | None = None
    """An earlier stage whose final EMA checkpoint warm-starts this one."""

    def __post_init__(self):
        require(
            bool(self.name) and "/" not in self.name,
            "name",
            f"must be a plain folder name, got {self.name!r}",
        )
        require(bool(self.config), "config", "names no stage config file")


@dataclass
class PipelineConfig:
    name: str = ""
    """The pipeline's name: runs go to RUN_ROOT/NAME/."""
    run_root: str = "runs"
    """Folder that holds the runs."""
    stages: list[PipelineStage] = field(default_factory=list)
    """The stages, in the order they run."""

    def __post_init__(self):
        require(bool(self.name), "name", "the pipeline needs a name")
        require(bool(self.stages), "stages", "the pipeline has no stages")
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            require(stage.name not in seen, f"stages.{i}.name", f"{stage.name!r} appears twice")
            require(
                stage.init_from is None or stage.init_from in seen,
                f"stages.{i}.init_from",
                f"{stage.init_from!r} is not an earlier stage",
            )
            seen.add(stage.name)


def load_pipeline(path: str | Path, overrides=()) -> PipelineConfig:
    return load_config(PipelineConfig, [path], overrides)


def stage_run_dir(pipeline: PipelineConfig, stage: PipelineStage) -> Path:
    return Path(pipeline.run_root) / pipeline.name / stage.name


def resolve_stage(pipeline: PipelineConfig, stage: PipelineStage, overrides=()) -> StageConfig:
    """The stage's config: its YAML, its pipeline overrides, the warm start, then the user's overrides."""
    values = {}
    if stage.init_from:
        source = next(s for s in pipeline.stages if s.name == stage.init_from)
        values["init_from"] = str(final_checkpoint(stage_run_dir(pipeline, source)))
    return load_config(StageConfig, [stage.config], [*stage.overrides, *overrides], values=values)


def _is_rank_zero() -> bool:
    return (
        int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
        and int(os.environ.get("NODE_RANK", "0")) == 0
    )


def ensure_shards(cfg: StageConfig, resolution: int, timeout_s: float = 3600) -> None:
    """Build `cfg.data.shards` if it has no manifest yet (rank zero builds, other ranks wait)."""
    out = Path(cfg.data.shards)
    if (out / MANIFEST).is_file() or "://" in cfg.data.shards or cfg.data.shards.startswith("pipe:"):
        return
    spec = cfg.build_shards
    if spec.kind is None:
        raise FileNotFoundError(
            f"{out}: no shards there, and the stage's build_shards names no kind to build"
        )
    if _is_rank_zero():
        files = [spec.config] if spec.config else []
        build_shards(spec.kind, files, spec.overrides, values={"out": str(out), "resolution": resolution})
        return
    deadline = time.monotonic() + timeout_s
    while not (out / MANIFEST).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{out}: waited {timeout_s:.0f}s for rank zero to build the shards")
        time.sleep(2)


def run_pipeline(
    path: str | Path, overrides=(), only: str | None = None, pipeline_overrides=()
) -> list[Path]:
    """Run every stage of the pipeline (or just `only`, whose warm-start source must be complete).
    `overrides` apply to every stage run. Returns the final checkpoints of the stages run."""
    from glyphgen.training.core import build_model_config

    pipeline = load_pipeline(path, pipeline_overrides)
    names = [s.name for s in pipeline.stages]
    if only is not None and only not in names:
        raise ValueError(f"{path}: no stage named {only!r} (stages: {', '.join(names)})")
    finals = []
    for stage in pipeline.stages:
        if only is not None and stage.name != only:
            continue
        run_dir = stage_run_dir(pipeline, stage)
        if is_complete(run_dir):
            print(f"[{pipeline.name}] {stage.name}: complete, skipped ({run_dir})")
            finals.append(final_checkpoint(run_dir))
            continue
        cfg = resolve_stage(pipeline, stage, overrides)
        if cfg.init_from and not Path(cfg.init_from).is_file():
            raise FileNotFoundError(
                f"{stage.name} warm-starts from {stage.init_from}, which has not finished ({cfg.init_from})"
            )
        ensure_shards(cfg, build_model_config(cfg).resolution)
        print(f"[{pipeline.name}] {stage.name}: training in {run_dir}")
        finals.append(train_stage(cfg, run_dir))
    return finals
