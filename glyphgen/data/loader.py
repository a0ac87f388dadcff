"""Streaming training batches from WebDataset shards to any number of DDP ranks and workers.

Two ways to split data (see ../shared/notes/webdataset-lightning.md):
- `resampled=False`: the shard list is split by rank, then by DataLoader worker, so no sample is
  seen by two ranks. The number of batches per worker is computed from the manifest's per-shard
  counts as the minimum over every (rank, worker), so every rank yields exactly the same number of
  batches each epoch and DDP never waits on a rank that ran dry. Each worker's stream cycles its own
  shards, so even a corrupt shard cannot put a rank out of step.
- `resampled=True`: every worker draws shards with replacement; the epoch length is set, not counted.

Every random choice is seeded by (seed, rank, worker, epoch), so an epoch is reproducible and a
resumed run can skip exactly the batches it already trained on (`StreamLoader.resume`).

Samples are shuffled as raw bytes (smaller), then decoded, then batched inside the worker; a batch is
`{"image": uint8 [B, C, H, W], "tokens": int64 [B, L], "mask": bool [B, L], "text": list[str]}`.
A corrupt member or shard is skipped, counted and warned about, never a crash.
"""

from __future__ import annotations

import io
import itertools
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from glyphgen.config import require
from glyphgen.data.images import resize_center_crop
from glyphgen.data.shards import read_manifest
from glyphgen.text.tokenizer import CharTokenizer

_SKIPS: Counter = Counter()


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

    def __post_init__(self):
        require(self.channels in (1, 3), "channels", f"must be 1 or 3, got {self.channels}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.resolution >= 8, "resolution", f"must be >= 8, got {self.resolution}")
        require(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0")
        require(self.epoch_batches is None or self.epoch_batches > 0, "epoch_batches", "must be > 0")


def skip_counts() -> Counter:
    """Samples and shards skipped as corrupt in this process, by exception type."""
    return Counter(_SKIPS)


def count_and_warn(exn: Exception) -> bool:
    """WebDataset error handler: count the skip, warn (naming the shard when known), keep going."""
    _SKIPS[type(exn).__name__] += 1
    total = sum(_SKIPS.values())
    if total <= 10 or math.log10(total).is_integer():
        warnings.warn(f"skipped corrupt data ({total} so far in this process): {exn}", stacklevel=2)
    return True


def resolve_shards(spec: str) -> tuple[list[str], list[int] | None]:
    """Shard URLs and, for a local folder, the per-shard sample counts from its manifest."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        manifest = read_manifest(folder)
        shards = manifest["shards"]
        return [str(folder / s["name"]) for s in shards], [int(s["count"]) for s in shards]
    if "://" in spec or spec.startswith("pipe:") or "{" in spec:
        return list(wds.shardlists.expand_urls(spec)), None
    if folder.suffix == ".tar" and folder.is_file():
        return [str(folder)], None
    raise FileNotFoundError(f"{spec}: no such shard folder (build it with `glyphgen make-shards`)")


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


def decode_sample(sample: dict, resolution: int, channels: int) -> dict:
    """Raw tar members -> {"image": uint8 [C, H, W], "text": str}. Raises on a broken member."""
    data = sample.get("png") or sample.get("jpg")
    if data is None:
        raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no png/jpg member")
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > 64 * resolution * resolution:
            raise ValueError(f"sample {sample['__key__']}: image {img.size} is far over {resolution}px")
        img = img.convert("L" if channels == 1 or img.mode in ("L", "1", "I;16", "I") else "RGB")
        if img.size != (resolution, resolution):
            img = resize_center_crop(img, resolution)
        arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return {"image": torch.from_numpy(np.ascontiguousarray(arr)), "text": sample["txt"].decode("utf-8")}


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
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "tokens": tokens,
            "mask": mask,
            "text": texts,
        }


def world_size() -> int:
    return wds.utils.pytorch_worker_info()[1]


class ShardStream(torch.utils.data.IterableDataset):
    """One epoch of batches for the current (rank, worker): exactly `per_worker` of them.

    Everything random is seeded by (seed, rank, worker, epoch), so an epoch is reproducible, and
    `start(epoch, skip)` resumes it with each worker `skip` batches in (raw samples are skipped,
    before decoding)."""

    def __init__(self, urls: list[str], cfg: LoaderConfig, tokenizer: CharTokenizer, per_worker: int):
        self.urls, self.cfg, self.per_worker = urls, cfg, per_worker
        self.collate = Collate(tokenizer, cfg.pad_to)
        self.epoch, self.skip = 0, 0

    def start(self, epoch: int, skip: int = 0) -> None:
        """Set the epoch (and the batches per worker already trained on) for the next iteration."""
        self.epoch, self.skip = epoch, skip

    def _shard_urls(self, rng: random.Random, rank: int, world: int, worker: int, workers: int):
        if self.cfg.resampled:
            while True:
                yield {"url": rng.choice(self.urls)}
        # The same split as webdataset's split_by_node then split_by_worker, cycled so a worker whose
        # shards turn out short (corrupt) still yields its share and keeps the ranks in step.
        mine = self.urls[rank::world][worker::workers]
        for cycle in itertools.count():
            order = list(mine)
            if cycle:
                rng.shuffle(order)
            yield from ({"url": u} for u in order)

    def __iter__(self):
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        rng = random.Random(hash((self.cfg.seed, rank, worker, self.epoch)))
        skip = self.skip
        samples = wds.tarfile_to_samples(handler=count_and_warn)(
            self._shard_urls(rng, rank, world, worker, workers)
        )
        if self.cfg.shuffle_buffer:
            samples = wds.filters._shuffle(
                samples, self.cfg.shuffle_buffer, min(self.cfg.shuffle_buffer, 100), rng=rng
            )
        samples = itertools.islice(samples, skip * self.cfg.batch_size, None)
        decoded = wds.filters._map(samples, self._decode, handler=count_and_warn)
        batches = wds.filters._batched(decoded, self.cfg.batch_size, collation_fn=self.collate, partial=False)
        yield from itertools.islice(batches, max(0, self.per_worker - skip))

    def _decode(self, sample: dict) -> dict:
        return decode_sample(sample, self.cfg.resolution, self.cfg.channels)


def make_dataset(cfg: LoaderConfig, tokenizer: CharTokenizer) -> tuple[ShardStream, int]:
    """The per-worker stream and the number of batches per rank per epoch."""
    urls, counts = resolve_shards(cfg.shards)
    workers = max(cfg.num_workers, 1)
    if cfg.resampled:
        total = cfg.epoch_batches or (sum(counts) // (cfg.batch_size * world_size()) if counts else None)
        if not total:
            raise ValueError(f"{cfg.shards}: set epoch_batches (the data set size is not known)")
        per_worker = max(1, total // workers)
    elif counts is None:
        if cfg.epoch_batches is None:
            raise ValueError(f"{cfg.shards}: set epoch_batches or resampled=true for a URL pattern")
        per_worker = max(1, cfg.epoch_batches // workers)
    else:
        per_worker = split_batches(counts, cfg.batch_size, world_size(), cfg.num_workers)
        if cfg.epoch_batches:
            per_worker = min(per_worker, max(1, cfg.epoch_batches // workers))
    return ShardStream(urls, cfg, tokenizer, per_worker), per_worker * workers


class StreamLoader:
    """Batches for training: a fresh DataLoader over the `ShardStream` each epoch (so each epoch's
    position reaches the workers), `len()` batches per rank per epoch.

    `epoch_fn` tells the epoch (e.g. the trainer's); without it epochs are counted. `resume(epoch,
    batches)` makes that epoch start after the batches already trained on, for exact resumption.
    Each batch carries `position` = (epoch, index in the epoch)."""

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
        for index, batch in enumerate(loader, start=skip - skip % workers):
            if index >= skip:
                batch["position"] = (epoch, index)
                yield batch


def make_loader(cfg: LoaderConfig, tokenizer: CharTokenizer | None = None, epoch_fn=None) -> StreamLoader:
    """The training loader: `len(loader)` batches per rank per epoch, the same on every rank."""
    dataset, batches = make_dataset(cfg, tokenizer or CharTokenizer())
    return StreamLoader(dataset, batches, cfg.num_workers, epoch_fn)
