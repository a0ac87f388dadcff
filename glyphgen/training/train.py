"""Running one training stage into a run folder (`glyphgen train`, used by the pipeline runner).

A run folder `runs/NAME/STAGE/` holds `config.yaml` (the resolved stage config), `checkpoints/`
(every N steps, `last.ckpt`, and `final.ckpt` when the stage is done), `logs/` (CSV and
TensorBoard), `samples/` (grids with OCR readings), `loss.png`, and `complete.json` once finished.
A folder with `complete.json` is skipped; one with `checkpoints/last.ckpt` is resumed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from glyphgen.checkpoint_io import check_tensors
from glyphgen.config import save_config, to_dict
from glyphgen.data.shard_list import resolve_shards
from glyphgen.files import write_atomically
from glyphgen.training.callbacks import LossCurve, PreemptionCheckpoint, SampleGrid, StageComplete
from glyphgen.training.checkpoints import AtomicCheckpointIO, read_checkpoint
from glyphgen.training.config import StageConfig
from glyphgen.training.core import DiffusionCore
from glyphgen.training.stages import STAGE_CLASSES

COMPLETE = "complete.json"
log = logging.getLogger("glyphgen")


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / COMPLETE).is_file()


def final_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "final.ckpt"


def default_precision(cfg: StageConfig) -> str:
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    return cfg.trainer.precision or ("bf16-mixed" if on_gpu else "32")


def build_trainer(cfg: StageConfig, run_dir: Path, module: DiffusionCore) -> L.Trainer:
    t, s = cfg.trainer, cfg.sample
    ckpt_dir = run_dir / "checkpoints"
    preemption = PreemptionCheckpoint(ckpt_dir / "last.ckpt")
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step-{step:07d}",
            every_n_train_steps=t.checkpoint_every_n_steps,
            save_top_k=-1,
            save_last=True,
            auto_insert_metric_name=False,
        ),
        preemption,
        # Refreshing the bar reads the loss back from the device: only as often as the logs do.
        TQDMProgressBar(refresh_rate=t.log_every_n_steps),
        SampleGrid(run_dir / "samples", s.every_n_steps, s.prompts, s.ocr, s.weights),
        LossCurve(run_dir / "logs" / "metrics.csv", run_dir / "loss.png"),
        StageComplete(
            final_checkpoint(run_dir), run_dir / COMPLETE, t.max_steps, bool(t.max_time), preemption
        ),
    ]
    loggers = [
        CSVLogger(save_dir=run_dir, name="logs", version=""),
        TensorBoardLogger(save_dir=run_dir, name="logs", version="", default_hp_metric=False),
    ]
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=default_precision(cfg),
        max_steps=t.max_steps,
        max_epochs=-1,
        max_time=t.max_time,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        use_distributed_sampler=False,  # the shard stream splits data by rank itself
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def _check_resumable(last: Path, module: DiffusionCore) -> None:
    """One line for a last.ckpt that Lightning could not resume `module` from (unreadable, foreign,
    incomplete, or of another network), before the run folder changes; Lightning's own errors are
    tracebacks."""
    ckpt = read_checkpoint(last)
    missing = [
        key for key in ("pytorch-lightning_version", "optimizer_states", "lr_schedulers") if key not in ckpt
    ]
    if missing:
        raise ValueError(f"{last}: not a checkpoint a run can resume from (no {', '.join(missing)})")
    module.on_load_checkpoint(ckpt)  # what Lightning does to the checkpoint before loading its weights
    check_tensors(module.state_dict(), ckpt["state_dict"], last)


def train_stage(cfg: StageConfig, run_dir: str | Path) -> Path:
    """Train (or resume, or skip) one stage; returns the path of its final checkpoint."""
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        log.info("%s: complete, skipped", run_dir)
        return final_checkpoint(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    module = STAGE_CLASSES[cfg.stage](to_dict(cfg))
    if resume:
        _check_resumable(last, module)
    elif cfg.init_from:
        print(module.warm_start(cfg.init_from))
    for spec in filter(None, (cfg.data.shards, cfg.data.replay)):
        resolve_shards(spec)  # a missing shard folder is named here, not after the run folder is made
    # Only now, with the resume or warm start and the data readable, may the run record its config.
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))
    trainer = build_trainer(cfg, run_dir, module)
    with warnings.catch_warnings():
        # Expected here: an iterable data stream has no sampler to replace, and logs append on resume.
        warnings.filterwarnings("ignore", message=".*(does not have many workers|exists and is not empty).*")
        try:
            trainer.fit(module, ckpt_path=str(last) if resume else None)
        except SIGTERMException:
            pass  # preempted: PreemptionCheckpoint has saved last.ckpt
    if not is_complete(run_dir):
        raise RuntimeError(
            f"{run_dir}: stopped at step {trainer.global_step} before the end; run again to resume from {last}"
        )
    return final_checkpoint(run_dir)
