"""The training callbacks' pictures and metrics: the loss plot and the sample grid's OCR scores."""

from __future__ import annotations

import csv

import numpy as np
import torch
from PIL import Image

from glyphgen.training.callbacks import QUARTILES, SampleGrid, plot_losses, smooth


def test_smoothing_keeps_constants_and_follows_a_step_without_overshoot():
    assert np.allclose(smooth([3.0] * 20, 0.9), 3.0)  # no start-up bias towards zero
    step = smooth([0.0] * 5 + [1.0] * 50, 0.8)
    assert np.all(np.diff(step) >= 0) and step[-1] < 1 and step[-1] > 0.99 and step[5] < 0.5


def _write_csv(path, rows, columns):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", *columns])
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def test_loss_plot_draws_the_loss_and_its_quartiles(tmp_path):
    columns = ["train/loss", *QUARTILES]
    rows = [
        {
            "epoch": 0,
            "step": s,
            "train/loss": 1 / (s + 1),
            **{q: (i + 1) / (s + 1) for i, q in enumerate(QUARTILES)},
        }
        for s in range(0, 400, 25)
    ]
    _write_csv(tmp_path / "metrics.csv", rows, columns)
    plot_losses(tmp_path / "metrics.csv", tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as img:
        assert img.size == (800, 450)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[::7]}
    assert len(colours) > 50  # curves, ticks and labels, not a blank canvas


def test_loss_plot_survives_an_empty_log_and_non_positive_losses(tmp_path):
    plot_losses(tmp_path / "missing.csv", tmp_path / "empty.png")
    assert (tmp_path / "empty.png").is_file()
    _write_csv(
        tmp_path / "m.csv", [{"epoch": 0, "step": s, "train/loss": s - 2.0} for s in range(5)], ["train/loss"]
    )
    plot_losses(tmp_path / "m.csv", tmp_path / "linear.png")  # a zero or negative loss: no log scale
    assert (tmp_path / "linear.png").is_file()


class _Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))


class _Trainer:
    def __init__(self):
        self.loggers = [_Logger()]
        self.global_step = 0


class _Module:
    samples_from_batch = False

    def sample_images(self, texts, batch, step, weights):
        return torch.zeros(len(texts), 3, 8, 8, dtype=torch.uint8)


class _Reader:
    """The OCR engine is outside the unit: it reads back what it was told to."""

    def __init__(self, readings):
        self.readings = iter(readings)

    def read(self, _picture):
        return type("Reading", (), {"text": next(self.readings)})()


def test_sample_grid_scores_like_the_evaluator(tmp_path):
    grid = SampleGrid(tmp_path, every_n_steps=1, prompts=["hello world", "two\nlines"], ocr=True)
    grid._last_batch = {"text": []}
    # Extra spaces and an empty line are what the OCR adds, not errors: `glyphgen evaluate`
    # normalises them away, and the training grid now scores the same way.
    grid._ocr = _Reader(["hello   world", "two\n\nlines "])
    trainer = _Trainer()
    grid.write(trainer, _Module(), step=5)
    step, metrics = trainer.loggers[0].logged[0]
    assert step == 5 and metrics == {"samples/cer": 0.0, "samples/exact": 1.0}
    assert (tmp_path / "step_0000005.png").is_file()
