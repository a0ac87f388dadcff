"""`glyphgen check-shards`: read every shard once and report what it really holds.

Unlike training, nothing is cycled or resampled: each shard is read exactly once, by one DataLoader
worker, and every sample is decoded as training would. Each worker sends back one report per shard
(images read, skips by kind), so skips counted in the workers reach the summary.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter

import torch
import webdataset as wds

from glyphgen.data.loader import LoaderConfig, decode_sample
from glyphgen.data.shard_list import NoDataError, SkipCounter, resolve_shards, shard_names


class OnePass(torch.utils.data.IterableDataset):
    """This worker's share of the shards (every `workers`-th), each read once: one report per shard."""

    def __init__(self, urls: list[str], resolution: int, channels: int):
        self.urls, self.resolution, self.channels = urls, resolution, channels

    def __iter__(self):
        worker, workers = wds.utils.pytorch_worker_info()[2:]
        for url in self.urls[worker::workers]:
            skips, images = SkipCounter(), 0
            for sample in wds.tarfile_to_samples(handler=skips)([{"url": url}]):
                try:
                    decode_sample(sample, self.resolution, self.channels)
                except Exception as exn:  # a broken sample: counted like training counts it
                    skips(exn)
                    continue
                images += 1
            yield {"url": url, "images": images, "skipped": dict(skips.counts)}


def check_shards(cfg: LoaderConfig) -> str:
    """Read `cfg.shards` once with `cfg.num_workers` workers; the one-line summary. Skips, and a
    manifest that promises other counts than the shards hold, are also warned about."""
    shards = resolve_shards(cfg.shards)
    workers = min(cfg.num_workers, len(shards.urls))
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        OnePass(shards.urls, cfg.resolution, cfg.channels), batch_size=None, num_workers=workers
    )
    images, skipped, barren = 0, Counter(), []
    for report in loader:
        images += report["images"]
        skipped.update(report["skipped"])
        if not report["images"]:
            barren.append(report["url"])
    seconds = time.perf_counter() - start
    skipped.update({"empty shard": len(shards.empty)} if shards.empty else {})
    if not images:
        raise NoDataError(
            f"{cfg.shards}: no readable sample in its {len(shards.urls)} shards ({shard_names(shards.urls)})"
        )
    listed = sum(shards.counts) if shards.counts is not None else images
    if listed != images:
        warnings.warn(
            f"{cfg.shards}: the manifest lists {listed} samples, the shards hold {images}", stacklevel=2
        )
    skips = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())) or "none"
    if skipped:
        warnings.warn(f"{cfg.shards}: skipped {skips}", stacklevel=2)
    if barren:
        warnings.warn(
            f"{cfg.shards}: {len(barren)} shard(s) gave no sample: {shard_names(barren)}", stacklevel=2
        )
    return (
        f"{cfg.shards}: {images} images in {len(shards.urls)} shards, read once in {seconds:.1f}s "
        f"({images / max(seconds, 1e-9):.0f} images/s with {workers} workers); skipped: {skips}"
    )
