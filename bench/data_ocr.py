"""The OCR's reading of a shard folder's own training images, per transcript: the ceiling a model
that drew like its data would reach on the rung, and which words the OCR itself finds hard.

    python bench/data_ocr.py data_shards/words-32 --images 800

Reads the first `--images` samples of one shard (`--shard`, default the fourth: any shard draws
from the same mixture) in file order.
"""

from __future__ import annotations

import argparse
import collections
import io
from pathlib import Path

import numpy as np
from PIL import Image

from glyphgen.data.shards import shard_members


def read_back(shard: Path, images: int, ocr) -> dict[str, list[str]]:
    """{transcript: the OCR's reading of each of its images} for the first `images` samples."""
    readings = collections.defaultdict(list)
    samples = shard_members(shard, ("txt", "png"))
    for key in sorted(samples)[:images]:
        image = Image.open(io.BytesIO(samples[key]["png"])).convert("RGB")
        readings[samples[key]["txt"].decode()].append(ocr.read(np.asarray(image)).text)
    return dict(readings)


def main() -> None:
    from glyphgen.ocr import Ocr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, help="a shard folder, e.g. data_shards/words-32")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--shard", type=int, default=3, help="which shard file, in sorted order")
    args = parser.parse_args()
    path = sorted(args.shards.glob("*.tar"))[args.shard]
    readings = read_back(path, args.images, Ocr())
    total = sum(len(r) for r in readings.values())
    exact = sum(got == text for text, r in readings.items() for got in r)
    print(f"{path}: {total} images, exact {exact / total:.3f}")
    for text, got in sorted(readings.items(), key=lambda item: -len(item[1])):
        misses = [g for g in got if g != text]
        print(f"{text!r}: {len(got) - len(misses)}/{len(got)} read exactly; misses {misses[:8]}")


if __name__ == "__main__":
    main()
