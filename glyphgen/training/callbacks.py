"""Callbacks of a training stage: periodic sample grids with OCR metrics, checkpoints on preemption
signals, and a loss-curve picture at the end."""

from __future__ import annotations

import csv
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from glyphgen.checkpoint_io import networks
from glyphgen.data.preview import save_grid
from glyphgen.data.shard_list import NoDataError
from glyphgen.eval.metrics import ocr_metrics
from glyphgen.training.core import QUARTILES


class SampleGrid(L.Callback):
    """Every `every_n_steps` optimizer steps and at the end of training, rank zero samples the held-out
    prompts with the EMA weights, writes `samples/step_NNNNNNN.png` (prompt and OCR reading under
    each image) and logs OCR metrics: `samples/cer` and `samples/exact`, the `cer` and
    `exact_transcript` of `glyphgen evaluate` (same normalisation). With `weights` "raw" or
    "both" the trained weights are sampled too: `step_NNNNNNN-raw.png`, `samples/raw_cer`, ...."""

    def __init__(self, folder: Path, every_n_steps: int, prompts: list[str], ocr: bool, weights: str = "ema"):
        self.folder, self.every, self.prompts, self.use_ocr = Path(folder), every_n_steps, prompts, ocr
        self.weights = networks(weights)
        self._ocr = None
        self._last_batch = None
        self._done_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_batch = batch
        step = trainer.global_step
        if self.every and step % self.every == 0 and step != self._done_step:
            self.write(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every and self._done_step != trainer.global_step:
            self.write(trainer, pl_module, trainer.global_step)

    @rank_zero_only
    def write(self, trainer, pl_module, step: int) -> None:
        self._done_step = step
        batch = self._last_batch
        # A superres model needs low-res images to upsample: it samples the last batch's texts.
        texts = batch["text"][:4] if pl_module.samples_from_batch else self.prompts
        if not texts:
            return
        for weights in self.weights:
            images = pl_module.sample_images(texts, batch, step=step, weights=weights)
            pictures = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
            captions = list(texts)
            tag, suffix = ("", "") if weights == "ema" else ("raw_", "-raw")
            if self.use_ocr:
                readings = [self.ocr().read(p).text for p in pictures]
                captions = [f"{t}\n-> {r}" for t, r in zip(texts, readings, strict=True)]
                scores = ocr_metrics(readings, texts)
                metrics = {
                    f"samples/{tag}cer": scores["cer"],
                    f"samples/{tag}exact": scores["exact_transcript"],
                }
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
            save_grid(pictures, captions, self.folder / f"step_{step:07d}{suffix}.png")

    def ocr(self):
        if self._ocr is None:
            from glyphgen.ocr import Ocr

            self._ocr = Ocr()
        return self._ocr


class PreemptionCheckpoint(L.Callback):
    """Save `last.ckpt` on preemption: on SIGUSR1 (installed here unless something else owns it)
    after the current step, then stop; on SIGTERM when Lightning's handler ends the run (it raises
    SIGTERMException at the next step, or at once while the loader waits for data, and every
    callback sees it in `on_exception`). Also when the data runs out mid-run (`NoDataError`: every
    shard gone or broken), so the steps trained so far are kept."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.requested = False
        self.preempted = False
        self._previous = None

    def on_train_start(self, trainer, pl_module) -> None:
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous = signal.signal(signal.SIGUSR1, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested:
            self._save(trainer)
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Data that ran out before the first step leaves nothing worth keeping.
        if isinstance(exception, SIGTERMException) or (
            isinstance(exception, NoDataError) and trainer.global_step > 0
        ):
            self._save(trainer)

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # resumable: optimizer and loops too
        self.requested, self.preempted = False, True

    def on_train_end(self, trainer, pl_module) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


class StageComplete(L.Callback):
    """When training ends by reaching max_steps (or the max_time budget) and not by preemption, save
    `final.ckpt` and write `complete.json` (rank zero). Runs inside the training processes, so it
    works the same under ddp_spawn, where the launching process never sees the final step.

    `complete.json` also records the throughput of the last run segment (since the last start or
    resume): its training seconds and the images all ranks trained on, sample grids included."""

    def __init__(
        self, final: Path, marker: Path, max_steps: int, timed: bool, preemption: PreemptionCheckpoint
    ):
        self.final, self.marker, self.max_steps, self.timed, self.preemption = (
            Path(final),
            Path(marker),
            max_steps,
            timed,
            preemption,
        )
        self._start = 0.0
        self._images = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch["text"]) * trainer.world_size

    def on_train_end(self, trainer, pl_module) -> None:
        if self.preemption.preempted or (trainer.global_step < self.max_steps and not self.timed):
            return
        seconds = time.perf_counter() - self._start
        trainer.save_checkpoint(self.final, weights_only=False)  # resumable: optimizer and loops too
        if trainer.is_global_zero:
            record = {
                "step": trainer.global_step,
                "checkpoint": str(self.final),
                "world_size": trainer.world_size,
                "segment_seconds": round(seconds, 3),
                "segment_images": self._images,
                "images_per_second": round(self._images / max(seconds, 1e-9), 3),
            }
            self.marker.write_text(json.dumps(record) + "\n")


def read_metric(csv_path: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric from a Lightning CSV log."""
    if not csv_path.is_file():
        return []
    with csv_path.open() as f:
        return [(int(row["step"]), float(row[name])) for row in csv.DictReader(f) if row.get(name)]


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average with the start-up bias removed (TensorBoard's smoothing): a
    constant stays constant, and early points are not pulled towards zero."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        avg, norm = weight * avg + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(avg / norm)
    return np.array(out)


def plot_losses(csv_path: Path, out: Path) -> None:
    """`loss.png`: the training loss on a log scale, raw (faint) and smoothed, with the smoothed loss
    of each timestep quarter, so a run reads at a glance: which noise levels still improve."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    from matplotlib import pyplot as plt

    loss = read_metric(csv_path, "train/loss")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    weight = min(0.9, 1 - 10 / max(len(loss), 10))  # about a tenth of the points per time constant
    if loss:
        steps, values = zip(*loss, strict=True)
        ax.plot(steps, values, color="tab:red", alpha=0.25, linewidth=0.8, label="loss")
        ax.plot(steps, smooth(values, weight), color="tab:red", linewidth=2, label="loss, smoothed")
    colours = ["tab:blue", "tab:cyan", "tab:olive", "tab:purple"]
    for q, (name, colour) in enumerate(zip(QUARTILES, colours, strict=True)):
        points = read_metric(csv_path, name)
        if points:
            steps, values = zip(*points, strict=True)
            label = f"t in quarter {q + 1} of 4" + (" (least noise)" if q == 0 else "")
            ax.plot(steps, smooth(values, weight), color=colour, linewidth=1.2, label=label)
    if loss and min(v for _, v in loss) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (hybrid)")
    ax.set_title("training loss" if loss else "training loss: nothing logged yet")
    ax.grid(True, which="both", alpha=0.3)
    if loss:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


class LossCurve(L.Callback):
    """At the end of training, rank zero draws `loss.png` from the CSV log."""

    def __init__(self, csv_path: Path, out: Path):
        self.csv_path, self.out = Path(csv_path), Path(out)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            logger.save()
        plot_losses(self.csv_path, self.out)
