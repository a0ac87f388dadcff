"""Callbacks of a training stage: periodic sample grids with OCR metrics, checkpoints on preemption
signals, and a loss-curve picture at the end."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image, ImageDraw

from glyphgen.checkpoint_io import networks
from glyphgen.data.loader import NoDataError
from glyphgen.data.preview import save_grid


def character_error_rate(predictions: list[str], targets: list[str]) -> float:
    from torchmetrics.functional.text import char_error_rate

    return float(char_error_rate(predictions, targets))


class SampleGrid(L.Callback):
    """Every `every_n_steps` optimizer steps and at the end of training, rank zero samples the held-out
    prompts with the EMA weights, writes `samples/step_NNNNNNN.png` (prompt and OCR reading under
    each image) and logs OCR metrics: `samples/cer` and `samples/exact`. With `weights` "raw" or
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
            images = pl_module.sample_images(texts, batch, seed=step, weights=weights)
            pictures = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
            captions = list(texts)
            tag, suffix = ("", "") if weights == "ema" else ("raw_", "-raw")
            if self.use_ocr:
                readings = [self.ocr().read(p).text for p in pictures]
                captions = [f"{t}\n-> {r}" for t, r in zip(texts, readings, strict=True)]
                exact = float(np.mean([r == t for r, t in zip(readings, texts, strict=True)]))
                metrics = {
                    f"samples/{tag}cer": character_error_rate(readings, texts),
                    f"samples/{tag}exact": exact,
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
        trainer.save_checkpoint(self.path)
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
        trainer.save_checkpoint(self.final)
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


def plot_curve(points: list[tuple[int, float]], path: Path, title: str, size=(640, 360)) -> None:
    """A plain line plot with Pillow (no plotting dependency): steps on x, value on y, log-free."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 60, 30, size[0] - 20, size[1] - 40
    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text((left, 8), title, fill="black")
    if len(points) >= 2:
        steps, values = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
        lo, hi = float(np.min(values)), float(np.max(values))
        hi = hi if hi > lo else lo + 1
        xs = left + (steps - steps[0]) / max(steps[-1] - steps[0], 1) * (right - left)
        ys = bottom - (values - lo) / (hi - lo) * (bottom - top)
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(200, 30, 30), width=2)
        draw.text((4, top), f"{hi:.3g}", fill="black")
        draw.text((4, bottom - 10), f"{lo:.3g}", fill="black")
        draw.text((left, bottom + 6), f"step {int(steps[0])}", fill="black")
        draw.text((right - 80, bottom + 6), f"step {int(steps[-1])}", fill="black")
    img.save(path)


class LossCurve(L.Callback):
    """At the end of training, rank zero draws `loss.png` from the CSV log."""

    def __init__(self, csv_path: Path, out: Path):
        self.csv_path, self.out = Path(csv_path), Path(out)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            logger.save()
        plot_curve(read_metric(self.csv_path, "train/loss"), self.out, "training loss (hybrid) by step")
