"""Streaming training batches from WebDataset shards to any number of DDP ranks and workers.

Two ways to split data (see ../shared/notes/webdataset-lightning.md):
- `resampled=False`: the shard list is split by rank, then by DataLoader worker, so no sample is
  seen by two ranks. The number of batches per worker is computed from the manifest's per-shard
  counts as the minimum over every (rank, worker), so every rank yields exactly the same number of
  batches each epoch and DDP never waits on a rank that ran dry. Each worker's stream cycles its own
  shards, so even a corrupt shard cannot put a rank out of step.
- `resampled=True`: every worker draws shards with replacement (deterministically seeded by rank,
  worker and epoch); the epoch length is set, not counted.

Samples are shuffled as raw bytes (smaller), then decoded, then batched inside the worker; a batch is
`{"image": uint8 [B, C, H, W], "tokens": int64 [B, L], "mask": bool [B, L], "text": list[str]}`.
A corrupt member or shard is skipped, counted and warned about, never a crash.
"""

from __future__ import annotations

import io
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
            img = _resize_center_crop(img, resolution)
        arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return {"image": torch.from_numpy(np.ascontiguousarray(arr)), "text": sample["txt"].decode("utf-8")}


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=2.0)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


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


class SeededShuffle:
    """A shuffle buffer seeded by (seed, rank, worker, epoch): reproducible, different per epoch."""

    def __init__(self, bufsize: int, seed: int):
        self.bufsize = bufsize
        self.seed = seed
        self.epoch = 0

    def __call__(self, src):
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(hash((self.seed, rank, worker, self.epoch)))
        self.epoch += 1
        return wds.filters._shuffle(src, self.bufsize, min(self.bufsize, 100), rng=rng)


def world_size() -> int:
    return wds.utils.pytorch_worker_info()[1]


def make_dataset(cfg: LoaderConfig, tokenizer: CharTokenizer) -> tuple[wds.DataPipeline, int]:
    """The per-worker pipeline and the number of batches per rank per epoch."""
    urls, counts = resolve_shards(cfg.shards)
    workers = max(cfg.num_workers, 1)
    ranks = world_size()
    if cfg.resampled:
        source = [wds.ResampledShards(urls, seed=cfg.seed, deterministic=True)]
        total = cfg.epoch_batches or (sum(counts) // (cfg.batch_size * ranks) if counts else None)
        if not total:
            raise ValueError(f"{cfg.shards}: set epoch_batches (the data set size is not known)")
        per_worker = max(1, total // workers)
    else:
        if counts is None:
            if cfg.epoch_batches is None:
                raise ValueError(f"{cfg.shards}: set epoch_batches or resampled=true for a URL pattern")
            per_worker = max(1, cfg.epoch_batches // workers)
        else:
            per_worker = split_batches(counts, cfg.batch_size, ranks, cfg.num_workers)
            if cfg.epoch_batches:
                per_worker = min(per_worker, max(1, cfg.epoch_batches // workers))
        source = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    stages = [
        *source,
        wds.tarfile_to_samples(handler=count_and_warn),
        *([SeededShuffle(cfg.shuffle_buffer, cfg.seed)] if cfg.shuffle_buffer else []),
        wds.map(_Decode(cfg.resolution, cfg.channels), handler=count_and_warn),
        wds.batched(cfg.batch_size, collation_fn=Collate(tokenizer, cfg.pad_to), partial=False),
    ]
    # with_epoch repeats the stream and cuts it at per_worker batches: each worker yields exactly that.
    return wds.DataPipeline(*stages).with_epoch(per_worker), per_worker * workers


class _Decode:
    def __init__(self, resolution: int, channels: int):
        self.resolution, self.channels = resolution, channels

    def __call__(self, sample: dict) -> dict:
        return decode_sample(sample, self.resolution, self.channels)


def make_loader(cfg: LoaderConfig, tokenizer: CharTokenizer | None = None) -> wds.WebLoader:
    """A DataLoader over `make_dataset`; `len(loader)` is the number of batches per rank per epoch."""
    dataset, batches = make_dataset(cfg, tokenizer or CharTokenizer())
    loader = wds.WebLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    # with_epoch already ends the epoch at `batches`; the length is for progress bars.
    return loader.with_length(batches, silent=True)
