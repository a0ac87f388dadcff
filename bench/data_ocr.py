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
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from glyphgen.ocr import Ocr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, help="a shard folder, e.g. data_shards/words-32")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--shard", type=int, default=3, help="which shard file, in sorted order")
    args = parser.parse_args()
    path = sorted(args.shards.glob("*.tar"))[args.shard]
    ocr = Ocr()
    read, seen = collections.Counter(), collections.Counter()
    misses = collections.defaultdict(list)
    with tarfile.open(path) as tar:
        samples = collections.defaultdict(dict)
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples[key][ext] = member
        for key in sorted(samples)[: args.images]:
            text = tar.extractfile(samples[key]["txt"]).read().decode()
            image = Image.open(io.BytesIO(tar.extractfile(samples[key]["png"]).read())).convert("RGB")
            got = ocr.read(np.asarray(image)).text
            seen[text] += 1
            read[text] += got == text
            if got != text:
                misses[text].append(got)
    print(f"{path}: {sum(seen.values())} images, exact {sum(read.values()) / sum(seen.values()):.3f}")
    for text, n in seen.most_common():
        print(f"{text!r}: {read[text]}/{n} read exactly; misses {misses[text][:8]}")


if __name__ == "__main__":
    main()
