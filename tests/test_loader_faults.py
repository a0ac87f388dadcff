"""Data that is empty, broken or disappears mid-run: the loader and training end with one line, a
checkpoint or a counted skip, never a hang. SIGTERM ends a run that is stuck waiting for data.

A regression here would hang, so every test has a deadline: SIGALRM in-process, a timeout for the
training subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import warnings

import pytest
from conftest import trainer_with_callback, write_shards
from lightning.pytorch.utilities.exceptions import SIGTERMException

from glyphgen.data import loader as L
from glyphgen.data.loader import LoaderConfig, make_dataset, make_loader
from glyphgen.text.tokenizer import CharTokenizer


class Hang(BaseException):
    """Not an Exception, so that no skip-and-go-on handler in the loader can swallow it."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: SIGALRM raises `Hang` in the main thread once `seconds` have passed."""

    def expire(signum, frame):
        raise Hang(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def break_samples(shard) -> None:
    """Keep every member but make every image undecodable."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = b"junk" if m.name.endswith(".png") else data
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))


def quietly(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_of_broken_samples_end_the_stream_with_one_line(tmp_path, workers):
    write_shards(tmp_path / "s", 8, maxcount=4)
    for shard in (tmp_path / "s").glob("*.tar"):
        break_samples(shard)
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=workers)
    with deadline(20), pytest.raises(L.NoDataError) as e:
        quietly(lambda: list(make_loader(cfg)))
    message = str(e.value)
    assert "\n" not in message  # from a worker too: not a traceback
    assert message == (
        f"{tmp_path / 's'}: no samples in a full pass over its 2 shards (shard-000000.tar, "
        "shard-000001.tar): every one is empty, missing or corrupt"
    )


def test_a_worker_whose_shards_are_empty_draws_from_the_others(tmp_path, monkeypatch):
    write_shards(tmp_path / "s", 8, maxcount=4)
    tarfile.open(tmp_path / "s" / "shard-000001.tar", "w").close()
    # A URL pattern has no manifest to check up front: the stream finds the empty shard itself.
    spec = f"{tmp_path}/s/shard-{{000000..000001}}.tar"
    cfg = LoaderConfig(shards=spec, resolution=32, batch_size=2, num_workers=2, epoch_batches=4)
    for key, value in dict(RANK=0, WORLD_SIZE=1, WORKER=1, NUM_WORKERS=2).items():
        monkeypatch.setenv(key, str(value))
    dataset, _ = make_dataset(cfg, CharTokenizer())
    with deadline(20), pytest.warns(UserWarning) as caught:
        batches = list(dataset)
    said = "\n".join(str(w.message) for w in caught)
    assert "gave no sample in a full pass: shard-000001.tar" in said
    assert "drawing from the other shards" in said
    assert len(batches) == 2  # its full share, from worker 0's shard
    for key in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(key)
    with deadline(20):
        assert len(quietly(lambda: list(make_loader(cfg)))) == 4  # both workers, real processes


def test_resampling_drops_empty_shards_and_stops_when_none_is_left(tmp_path):
    write_shards(tmp_path / "s", 8, maxcount=4)
    (tmp_path / "s" / "shard-000001.tar").write_bytes(b"")
    spec = f"{tmp_path}/s/shard-{{000000..000001}}.tar"
    cfg = LoaderConfig(
        shards=spec, resolution=32, batch_size=2, num_workers=0, resampled=True, epoch_batches=6
    )
    with deadline(20):
        assert len(quietly(lambda: list(make_loader(cfg)))) == 6
    (tmp_path / "s" / "shard-000000.tar").write_bytes(b"")
    with deadline(20), pytest.raises(L.NoDataError, match="no samples in a full pass over its 2 shards"):
        quietly(lambda: list(make_loader(cfg)))


def test_shards_deleted_while_streaming_are_skipped_then_stop_the_stream(tmp_path):
    write_shards(tmp_path / "s", 16, maxcount=4)
    cfg = LoaderConfig(
        shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=0, shuffle_buffer=0
    )
    loader = make_loader(cfg)  # the manifest and every shard are checked here
    for name in ("shard-000001.tar", "shard-000003.tar"):
        (tmp_path / "s" / name).unlink()
    with deadline(20), pytest.warns(UserWarning) as caught:
        batches = list(loader)
    assert len(batches) == 8  # the epoch keeps its length from the shards left
    assert {"t0", "t8"} <= set(t for b in batches for t in b["text"])
    assert any(
        "skipped 2 shard(s)" in str(w.message) and "shard-000003.tar" in str(w.message) for w in caught
    )
    for name in ("shard-000000.tar", "shard-000002.tar"):
        (tmp_path / "s" / name).unlink()
    with deadline(20), pytest.raises(L.NoDataError, match="every one is empty, missing or corrupt"):
        quietly(lambda: list(loader))


def test_sigterm_ends_a_wait_for_data(tmp_path, monkeypatch):
    write_shards(tmp_path / "s", 8, maxcount=4)
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=2, num_workers=0)
    monkeypatch.setattr(L, "decode_sample", lambda *args: time.sleep(10))  # data that never comes
    received = []

    def trainers(signum, frame):  # the handler the trainer installed
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, trainers)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        start = time.monotonic()
        with deadline(15), pytest.raises(SIGTERMException):
            next(iter(make_loader(cfg)))
        assert time.monotonic() - start < 5
        assert received == [signal.SIGTERM]  # the handler that was there still ran first
        assert signal.getsignal(signal.SIGTERM) is trainers  # ... and is back in place
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)


# -- the real trainer, in a subprocess so that a regression fails on its timeout instead of hanging --

RUN_SCRIPT = """
import os, pathlib, signal, sys, time
import lightning as L
import glyphgen.data.loader as loader
import glyphgen.training.train as train
from glyphgen.cli import main

STALL = pathlib.Path({stall!r})

class AtStep(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == {at_step}:
            for name in {delete!r}:
                os.unlink(os.path.join({shards!r}, name))
            if {stall_data!r}:
                STALL.touch()

decode = loader.decode_sample
def stalling_decode(*args):
    if STALL.exists():  # from now on the data never comes (a stuck pipe, a stalled network mount)
        STALL.with_suffix(".stuck").touch()
        time.sleep(600)
    return decode(*args)
loader.decode_sample = stalling_decode

{with_callback}sys.exit(main(["train", "--run-dir", {run!r}, *{overrides!r}]))
"""


def start_run(tmp_path, workers: int, at_step: int = 2, delete=(), stall_data=False) -> subprocess.Popen:
    shards = tmp_path / "s"
    write_shards(shards, 32, maxcount=4)
    overrides = {
        "stage": "pretrain-synthetic",
        "model_size": "tiny",
        "data.shards": str(shards),
        "data.resolution": 32,
        "data.batch_size": 4,
        "data.num_workers": workers,
        "data.shuffle_buffer": 4,
        "trainer.max_steps": 12,
        "trainer.checkpoint_every_n_steps": 100,
        "trainer.log_every_n_steps": 1,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "sample.every_n_steps": 0,
    }
    script = RUN_SCRIPT.format(
        with_callback=trainer_with_callback("AtStep"),
        stall=str(tmp_path / "stall"),
        at_step=at_step,
        delete=list(delete),
        shards=str(shards),
        stall_data=stall_data,
        run=str(tmp_path / "run"),
        overrides=[f"{k}={v}" for k, v in overrides.items()],
    )
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the run hung: still running after {timeout}s\n{err.decode()[-3000:]}")
    return proc.returncode, err.decode()


def last_step(run) -> int:
    from glyphgen.training.checkpoints import read_checkpoint

    return read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]


@pytest.mark.slow
def test_training_on_shards_that_all_disappear_ends_with_one_line_and_a_checkpoint(tmp_path):
    names = [f"shard-{i:06d}.tar" for i in range(8)]
    code, err = finish(start_run(tmp_path, workers=0, delete=names), timeout=240)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("glyphgen: error: "), err[-3000:]
    assert "no samples in a full pass over its 8 shards" in last
    assert last_step(tmp_path / "run") >= 2
    assert not (tmp_path / "run" / "complete.json").exists()


@pytest.mark.slow
def test_training_skips_shards_that_disappear_with_a_warning(tmp_path):
    proc = start_run(tmp_path, workers=1, delete=["shard-000005.tar", "shard-000006.tar"])
    code, err = finish(proc, timeout=240)
    assert code == 0, err[-3000:]
    assert "shard-000005.tar" in err and "gave no sample in a full pass" in err
    assert (tmp_path / "run" / "complete.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_ends_a_run_stuck_on_data_with_a_checkpoint(tmp_path, workers):
    proc = start_run(tmp_path, workers=workers, stall_data=True)
    stuck = (tmp_path / "stall").with_suffix(".stuck")
    waited = time.monotonic()
    while not stuck.exists() and proc.poll() is None and time.monotonic() - waited < 120:
        time.sleep(0.1)
    assert stuck.exists(), finish(proc, timeout=10)[1][-3000:]
    time.sleep(0.5)  # well inside the wait for the next batch
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code, err = finish(proc, timeout=30)
    assert time.monotonic() - start < 20
    last = err.strip().splitlines()[-1]
    assert code == 2 and "glyphgen: error: " in last and "run again to resume" in last, err[-3000:]
    assert last_step(tmp_path / "run") >= 2
