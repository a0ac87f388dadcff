"""Streaming training batches from WebDataset shards to any number of DDP ranks and workers.

Two ways to split data (docs/architecture.md, "Streaming shards into training", explains both and
the WebDataset and Lightning behaviours this module is built around):
- `resampled=False`: the shard list is split by rank, then by DataLoader worker, so no sample is
  seen by two ranks. The number of batches per worker is computed from the manifest's per-shard
  counts as the minimum over every (rank, worker), so every rank yields exactly the same number of
  batches each epoch and DDP never waits on a rank that ran dry. Each worker reads its own shards
  pass after pass, so even a corrupt shard cannot put a rank out of step.
- `resampled=True`: every worker draws shards with replacement; the epoch length is set, not counted.
A `replay` spec adds a fixed number of samples per batch drawn with replacement from other shards
(an earlier stage's data), so a finetune keeps practising what the model already knows.

Every random choice is seeded by (seed, rank, worker, epoch), so an epoch is reproducible and a
resumed run can skip exactly the batches it already trained on (`StreamLoader.resume`).

Samples are shuffled as raw bytes (smaller), then decoded, then batched inside the worker; a batch is
`{"image": uint8 [B, C, H, W], "tokens": int64 [B, L], "mask": bool [B, L], "text": list[str]}`.

Bad data never hangs or crashes the loader. A corrupt member or shard is skipped, counted and warned
about. A shard that gives no sample in a full pass is dropped with a warning; a worker left with none
of its own draws from the others so its rank keeps its share; when no shard is left, `NoDataError`
names them. A shard folder's manifest names plain `.tar` files inside it, nothing else: a name that
is a path elsewhere, a URL or a `pipe:` command is refused (those only come from what the user types).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
import signal
import threading
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from glyphgen.config import require
from glyphgen.data.images import resize_center_crop, to_rgb
from glyphgen.data.shard_list import NoDataError, SkipCounter, resolve_shards, shard_names
from glyphgen.data.shards import MAX_WORKERS
from glyphgen.text.tokenizer import CharTokenizer


@dataclass
class LoaderConfig:
    shards: str = "data_shards/synthetic-64"
    """A shard folder with a manifest.json, or a WebDataset URL pattern (brace ranges, `pipe:`, http)."""
    resolution: int = 64
    """Side of the square images handed to the model; shards of another size are resized and cropped."""
    channels: int = 3
    """3: grayscale shards are repeated to RGB (the model sees RGB); 1: keep one channel."""
    batch_size: int = 32
    """Batch size per rank."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0: load in the training process)."""
    shuffle_buffer: int = 1000
    """Samples held for shuffling in each worker (0 disables shuffling)."""
    resampled: bool = False
    """Draw shards with replacement instead of splitting them across ranks and workers."""
    epoch_batches: int | None = None
    """Batches per rank per epoch. Default: everything the smallest rank can be given (split mode),
    or the data set size divided by the global batch (resampled mode). Needed for URL patterns."""
    seed: int = 0
    """Seeds shuffling and resampling (combined with rank, worker and epoch)."""
    pad_to: int | None = None
    """Pad token sequences to this length (fixed shapes for torch.compile); default: the batch's longest."""
    char_boxes: bool = False
    """Also read each sample's per-character ink boxes (synthetic shards store them) into batches as
    `boxes` [B, L, 4], aligned with the tokens, for the character localisation loss."""
    replay: str | None = None
    """A second shard folder or pattern mixed into every batch, drawn with replacement: an earlier
    stage's data (stage 1's synthetic text while finetuning on photos), so that what the model
    learned there is practised, not forgotten. The epoch is counted over `shards` alone."""
    replay_fraction: float = 0.25
    """Share of each batch taken from `replay` (rounded to whole samples, at least one)."""

    def __post_init__(self):
        require(self.channels in (1, 3), "channels", f"must be 1 or 3, got {self.channels}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(
            0 <= self.num_workers <= MAX_WORKERS,
            "num_workers",
            f"must be in [0, {MAX_WORKERS}], got {self.num_workers}",
        )
        require(self.resolution >= 8, "resolution", f"must be >= 8, got {self.resolution}")
        require(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0")
        require(self.epoch_batches is None or self.epoch_batches > 0, "epoch_batches", "must be > 0")
        require(
            0 < self.replay_fraction < 1, "replay_fraction", f"must be in (0, 1), got {self.replay_fraction}"
        )
        if self.replay:
            require(
                self.replay_per_batch < self.batch_size,
                "replay_fraction",
                f"{self.replay_fraction} of batch_size={self.batch_size} leaves no sample of `shards`",
            )

    @property
    def replay_per_batch(self) -> int:
        """Samples of each batch drawn from `replay` (0 without one)."""
        return max(1, round(self.replay_fraction * self.batch_size)) if self.replay else 0

    @property
    def own_per_batch(self) -> int:
        """Samples of each batch drawn from `shards`: the ones an epoch counts."""
        return self.batch_size - self.replay_per_batch


def split_batches(counts: list[int], batch_size: int, world_size: int, num_workers: int) -> int:
    """Batches each worker can yield so that every (rank, worker) pair yields the same number,
    given the split that `split_by_node` then `split_by_worker` make of the shard list."""
    workers = max(num_workers, 1)
    if len(counts) < world_size * workers:
        raise ValueError(
            f"{len(counts)} shards cannot be split over {world_size} ranks x {workers} workers; "
            "write more (smaller) shards or set resampled=true"
        )
    per_pair = [
        sum(counts[rank::world_size][worker::workers]) // batch_size
        for rank in range(world_size)
        for worker in range(workers)
    ]
    if min(per_pair) == 0:
        raise ValueError(
            f"some rank/worker gets fewer than batch_size={batch_size} samples; "
            "lower the batch size or the worker count, or write more data"
        )
    return min(per_pair)


def decode_sample(sample: dict, resolution: int, channels: int, char_boxes: bool = False) -> dict:
    """Raw tar members -> {"image": uint8 [C, H, W], "text": str} and with `char_boxes` also
    "char_boxes": the json member's boxes as fractions of the image side (None when the sample has
    none, or is not square, so a crop would move them). Raises on a broken member."""
    data = sample.get("png") or sample.get("jpg")
    if data is None:
        raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no png/jpg member")
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > 64 * resolution * resolution:
            raise ValueError(f"sample {sample['__key__']}: image {img.size} is far over {resolution}px")
        # 8-bit gray and RGB are used as stored; every other mode (16-bit, palette, alpha, CMYK) goes
        # through the converter real images use, which scales deep grayscale instead of clipping it.
        img = img if img.mode in ("L", "RGB") else to_rgb(img)
        if channels == 1 and img.mode != "L":
            img = img.convert("L")
        size = img.size
        if img.size != (resolution, resolution):
            img = resize_center_crop(img, resolution)
        arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    out = {"image": torch.from_numpy(np.ascontiguousarray(arr)), "text": sample["txt"].decode("utf-8")}
    if char_boxes:
        boxes = json.loads(sample["json"]).get("char_boxes") if "json" in sample else None
        square = size[0] == size[1]
        out["char_boxes"] = [b and [v / size[0] for v in b] for b in boxes] if boxes and square else None
    return out


def token_boxes(char_boxes: list | None, length: int) -> torch.Tensor:
    """Per-token boxes [length, 4] from a sample's `char_boxes`: token 0 is BOS, token i + 1 is
    character i; a token without a box (specials, spaces, padding, cut characters) gets zeros."""
    out = torch.zeros(length, 4)
    boxes = (char_boxes or [])[: max(length - 2, 0)]
    if boxes:  # one tensor per sample, not one per character: this runs in collate
        out[1 : len(boxes) + 1] = torch.tensor([box or [0.0] * 4 for box in boxes])
    return out


class Collate:
    """Stacks images and tokenizes transcripts inside the worker (picklable for spawn)."""

    def __init__(self, tokenizer: CharTokenizer, pad_to: int | None):
        self.tokenizer = tokenizer
        self.pad_to = pad_to
        self._reported = 0

    def __call__(self, samples: list[dict]) -> dict:
        texts = [s["text"] for s in samples]
        tokens, mask = self.tokenizer.batch(texts, pad_to=self.pad_to)
        unknown = self.tokenizer.unknown_chars + self.tokenizer.truncated
        if unknown and (self._reported == 0 or unknown >= 10 * self._reported):
            self._reported = unknown
            self.tokenizer.warn_counts("training data")
        batch = {
            "image": torch.stack([s["image"] for s in samples]),
            "tokens": tokens,
            "mask": mask,
            "text": texts,
        }
        if "char_boxes" in samples[0]:
            batch["boxes"] = torch.stack([token_boxes(s["char_boxes"], tokens.shape[1]) for s in samples])
        return batch


def world_size() -> int:
    return wds.utils.pytorch_worker_info()[1]


class ShardStream(torch.utils.data.IterableDataset):
    """One epoch of batches for the current (rank, worker): exactly `per_worker` of them.

    Everything random is seeded by (seed, rank, worker, epoch), so an epoch is reproducible, and
    `start(epoch, skip)` resumes it with each worker `skip` batches in (raw samples are skipped,
    before decoding). When no shard gives samples any more, the stream ends with `{"error": message}`
    instead of a batch: an exception raised in a DataLoader worker would reach the training process
    as a multi-line traceback."""

    def __init__(
        self,
        urls: list[str],
        cfg: LoaderConfig,
        tokenizer: CharTokenizer,
        per_worker: int,
        replay_urls: list[str] | None = None,
    ):
        self.urls, self.cfg, self.per_worker = urls, cfg, per_worker
        self.replay_urls = replay_urls or []
        self.collate = Collate(tokenizer, cfg.pad_to)
        self.epoch, self.skip = 0, 0

    def start(self, epoch: int, skip: int = 0) -> None:
        """Set the epoch (and the batches per worker already trained on) for the next iteration."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        rng = random.Random(hash((self.cfg.seed, rank, worker, self.epoch)))
        # The same split as webdataset's split_by_node then split_by_worker.
        own = None if self.cfg.resampled else self.urls[rank::world][worker::workers]
        extra, own_per_batch = self.cfg.replay_per_batch, self.cfg.own_per_batch
        samples = self._samples(rng, own, self.skip * own_per_batch, self.urls, self.cfg.shards)
        if extra:
            replay_rng = random.Random(hash((self.cfg.seed, rank, worker, self.epoch, "replay")))
            replayed = self._samples(replay_rng, None, self.skip * extra, self.replay_urls, self.cfg.replay)
            samples = interleave(samples, own_per_batch, replayed, extra)
        batches = wds.filters._batched(samples, self.cfg.batch_size, collation_fn=self.collate, partial=False)
        try:
            yield from itertools.islice(batches, max(0, self.per_worker - self.skip))
        except NoDataError as e:
            yield {"error": str(e)}

    def _samples(self, rng: random.Random, own: list[str] | None, skip: int, all_urls: list[str], name: str):
        """Decoded samples, pass after pass: over this worker's `own` shards (the first pass in order,
        then shuffled), or, when resampling or when none of its own is left, over as many draws from
        `all_urls` still alive (`name`: the spec they came from, for messages). Each pass has its own
        shuffle buffer, so when a pass ends every sample it read has been decoded and a shard that
        gave none is known: it is dropped."""
        skips, dead = SkipCounter(), set()
        for cycle in itertools.count():
            alive = [u for u in own or () if u not in dead]
            if alive:
                urls = rng.sample(alive, len(alive)) if cycle else alive
            else:
                pool = [u for u in all_urls if u not in dead]
                if not pool:
                    raise NoDataError(
                        f"{name}: no samples in a full pass over its {len(all_urls)} shards "
                        f"({shard_names(all_urls)}): every one is empty, missing or corrupt"
                    )
                urls = [rng.choice(pool) for _ in pool]
            raw = wds.tarfile_to_samples(handler=skips)({"url": u} for u in urls)
            if self.cfg.shuffle_buffer:
                raw = wds.filters._shuffle(
                    raw, self.cfg.shuffle_buffer, min(self.cfg.shuffle_buffer, 100), rng=rng
                )
            gave: Counter = Counter()
            for sample in raw:
                if skip:
                    skip -= 1  # resuming: trained on already, so not decoded again
                else:
                    try:
                        decoded = decode_sample(
                            sample, self.cfg.resolution, self.cfg.channels, self.cfg.char_boxes
                        )
                    except Exception as exn:  # a broken sample: counted, warned about, skipped
                        skips(exn)
                        continue
                    yield decoded
                gave[sample["__url__"]] += 1
            barren = sorted(set(urls) - set(gave))
            if barren:
                dead.update(barren)
                warnings.warn(
                    f"{name}: skipped {len(barren)} shard(s) that gave no sample in a full pass: "
                    f"{shard_names(barren)}",
                    stacklevel=2,
                )
                if own and set(barren) & set(own) and dead.issuperset(own) and len(dead) < len(all_urls):
                    warnings.warn(
                        f"{name}: none of this worker's shards gives samples; drawing from the "
                        "other shards so that its rank keeps its share of batches",
                        stacklevel=2,
                    )


def interleave(own, own_per_batch: int, replayed, extra: int):
    """`own_per_batch` samples of `own`, then `extra` of `replayed`, again and again: every batch cut
    from the stream holds exactly that many of each. Ends when `own` does."""
    while True:
        group = list(itertools.islice(own, own_per_batch))
        if len(group) < own_per_batch:
            return
        yield from group
        yield from itertools.islice(replayed, extra)


def make_dataset(cfg: LoaderConfig, tokenizer: CharTokenizer) -> tuple[ShardStream, int]:
    """The per-worker stream and the number of batches per rank per epoch."""
    shards = resolve_shards(cfg.shards)
    counts = shards.counts
    workers = max(cfg.num_workers, 1)
    if cfg.resampled:  # the epoch counts the stage's own samples, not the replayed ones
        total = cfg.epoch_batches or (sum(counts) // (cfg.own_per_batch * world_size()) if counts else None)
        if not total:
            raise ValueError(f"{cfg.shards}: set epoch_batches (the data set size is not known)")
        per_worker = max(1, total // workers)
    elif counts is None:
        if cfg.epoch_batches is None:
            raise ValueError(f"{cfg.shards}: set epoch_batches or resampled=true for a URL pattern")
        per_worker = max(1, cfg.epoch_batches // workers)
    else:
        per_worker = split_batches(counts, cfg.own_per_batch, world_size(), cfg.num_workers)
        if cfg.epoch_batches:
            per_worker = min(per_worker, max(1, cfg.epoch_batches // workers))
    replay = resolve_shards(cfg.replay).urls if cfg.replay else []
    return ShardStream(shards.urls, cfg, tokenizer, per_worker, replay), per_worker * workers


@contextlib.contextmanager
def sigterm_ends_wait():
    """While the training process waits for data, SIGTERM also raises Lightning's SIGTERMException,
    after the handler already installed (the trainer's) has run: the trainer acts on SIGTERM only
    between steps, and a loader blocked on its data never reaches one. Where no Python handler is
    installed (SIGTERM ends the process anyway, or is ignored on purpose) nothing changes."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def handler(signum, frame):
        previous(signum, frame)
        raise SIGTERMException

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StreamLoader:
    """Batches for training: a fresh DataLoader over the `ShardStream` each epoch (so each epoch's
    position reaches the workers), `len()` batches per rank per epoch.

    `epoch_fn` tells the epoch (e.g. the trainer's); without it epochs are counted. `resume(epoch,
    batches)` makes that epoch start after the batches already trained on, for exact resumption.
    Each batch carries `position` = (epoch, index in the epoch). Raises `NoDataError` when no shard
    gives samples any more."""

    def __init__(self, dataset: ShardStream, batches: int, num_workers: int, epoch_fn=None):
        self.dataset, self.batches, self.num_workers, self.epoch_fn = dataset, batches, num_workers, epoch_fn
        self._epochs = 0
        self._resume: dict[int, int] = {}

    def __len__(self) -> int:
        return self.batches

    def resume(self, epoch: int, batches: int) -> None:
        self._resume[epoch] = batches

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._epochs
        self._epochs = epoch + 1
        skip = self._resume.pop(epoch, 0)
        # A DataLoader takes batch i from worker i % workers, starting at worker 0: workers skip whole
        # rounds, and the remainder is dropped here.
        workers = max(self.num_workers, 1)
        self.dataset.start(epoch, skip // workers)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=4 if self.num_workers else None,
        )
        batches = iter(loader)
        try:
            for index in itertools.count(skip - skip % workers):
                with sigterm_ends_wait():
                    batch = next(batches, None)
                if batch is None:
                    return
                if "error" in batch:
                    raise NoDataError(batch["error"])
                if index >= skip:
                    batch["position"] = (epoch, index)
                    yield batch
        finally:
            # Stop the workers now, not when a traceback that holds this frame is collected (a
            # late shutdown waits seconds for each worker).
            del batches


def make_loader(cfg: LoaderConfig, tokenizer: CharTokenizer | None = None, epoch_fn=None) -> StreamLoader:
    """The training loader: `len(loader)` batches per rank per epoch, the same on every rank."""
    dataset, batches = make_dataset(cfg, tokenizer or CharTokenizer())
    return StreamLoader(dataset, batches, cfg.num_workers, epoch_fn)
