"""Tiny trained checkpoints for the inference tests: a 2-step `tiny` base and a 2-step `tiny-sr`
superres, trained for real (Lightning, synthetic shards) once per test session and shared by the
test modules through the session's base temporary folder."""

from __future__ import annotations

from pathlib import Path

from glyphgen.config import load_config
from glyphgen.data.build import build
from glyphgen.training.config import StageConfig
from glyphgen.training.train import train_stage


def _stage(stage: str, size: str, shards: Path, steps: int = 2) -> StageConfig:
    values = {
        "stage": stage,
        "model_size": size,
        "data.shards": str(shards),
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.shuffle_buffer": 4,
        "trainer.max_steps": steps,
        "trainer.checkpoint_every_n_steps": steps,
        "trainer.log_every_n_steps": 1,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "sample.every_n_steps": 0,
        "optim.lr": 1e-3,
        "optim.ema_decay": 0.5,
    }
    return load_config(StageConfig, overrides=[f"{k}={v}" for k, v in values.items()])


def trained_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """{"base": tiny 32 px checkpoint, "superres": tiny-sr 32 -> 64 px checkpoint}."""
    root = tmp_path_factory.getbasetemp() / "tiny-checkpoints"
    runs = {"base": ("pretrain-synthetic", "tiny", 32), "superres": ("superres", "tiny-sr", 64)}
    finals = {}
    for name, (stage, size, res) in runs.items():
        shards = root / f"shards-{res}"
        if not (shards / "manifest.json").is_file():
            build(
                "synthetic",
                overrides=["shard_size=8"],
                values={"out": str(shards), "resolution": res, "count": 8, "workers": 1},
            )
        # train_stage skips a finished run, so later modules reuse the first module's checkpoints.
        finals[name] = train_stage(_stage(stage, size, shards), root / name)
    return finals
