"""The report of a real-image shard build, for a person to look at: `report.json` and `report.png`
in the output folder of every build, every `--part`, and the folder merge-shards writes.

Statistics are gathered in the building process from the results as they arrive (`ReportStats.add`),
never by reading the shards again: the kept samples' characters per transcript (line breaks not
counted), lines, OCR confidence (`ocr_confidence`: OCR transcripts only) and text-area fraction
(`text_area`: where text boxes are known), as histograms with fixed bins so that reports add up; the
skips by reason; a seeded reservoir of kept samples (shard and key: the grid reads their images
back from the shards) and one of dropped samples (with a thumbnail, the only copy of their image).
A `--part` keeps one `ReportStats` per input shard in that shard's `shard-PPPPPP.json`, so a part
that was killed and resumed reports exactly what an uninterrupted run does; the part's report and
the merged one are `combine`d from those, the merged one from the parts' `report.json`.

report.png (one image): the counts, the four histograms (matplotlib), a grid of up to 16 random kept
samples with their transcripts and one of up to 16 dropped samples with their reason
(glyphgen.data.preview.save_grid).
"""

from __future__ import annotations

import base64
import bisect
import io
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from glyphgen.data.real_filters import Dropped, count_chars
from glyphgen.data.shards import Sample, ShardsExistError, Skipped, foreign_entries, shard_members
from glyphgen.files import write_atomically

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
REPORT_FILES = (REPORT_JSON, REPORT_PNG)
GRID = 16
"""Kept and dropped samples shown in report.png."""
PROGRESS_EVERY = 5.0
"""Seconds between progress lines on stderr."""
BINS = {
    "chars": list(range(0, 132, 4)),
    "lines": list(range(17)),
    "ocr_confidence": [round(v * 0.05, 4) for v in range(20)],
    "text_area": [round(v * 0.025, 4) for v in range(40)],
}
"""Left edges of each histogram's bins; the last bin also holds everything above its edge."""
TITLES = {
    "chars": "characters per transcript",
    "lines": "lines per transcript",
    "ocr_confidence": "OCR confidence (mean score)",
    "text_area": "text area / image area",
}


def sample_values(text: str, meta: dict) -> dict:
    """What each histogram counts of one kept sample (None: not known for it)."""
    return {
        "chars": count_chars(text),
        "lines": meta.get("lines", text.count("\n") + 1),
        "ocr_confidence": meta.get("ocr_confidence"),
        "text_area": meta.get("text_area"),
    }


def _bin(name: str, value: float) -> int:
    return max(bisect.bisect_right(BINS[name], value) - 1, 0)


class ReportStats:
    """Counts, histograms and two seeded reservoirs of one build, part, input shard or merge."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.kept = 0
        self.skipped: Counter = Counter()
        self.hists = {name: {"counts": [0] * len(edges), "n": 0, "sum": 0.0} for name, edges in BINS.items()}
        self.kept_samples: list[dict] = []
        self.dropped_samples: list[dict] = []
        self.dropped_with_image = 0
        self._rng = random.Random(seed)

    def add(self, result: Sample | Skipped, shard: str) -> None:
        """Count one result; a kept sample lives in `shard` (a file name in the output folder)."""
        if isinstance(result, Skipped):
            self.skipped[result.reason] += 1
            if isinstance(result, Dropped) and result.thumb:
                self.dropped_with_image += 1
                item = {"reason": result.reason, "detail": result.detail[:300]}
                item["thumb"] = base64.b64encode(result.thumb).decode()
                self._offer(self.dropped_samples, self.dropped_with_image, item)
            return
        self.kept += 1
        for name, value in sample_values(result.text, result.meta).items():
            if value is not None:
                hist = self.hists[name]
                hist["counts"][_bin(name, value)] += 1
                hist["n"] += 1
                hist["sum"] += value
        self._offer(self.kept_samples, self.kept, {"shard": shard, "key": result.key, "text": result.text})

    def _offer(self, reservoir: list, seen: int, item: dict) -> None:
        if len(reservoir) < GRID:
            reservoir.append(item)
        elif (j := self._rng.randrange(seen)) < GRID:
            reservoir[j] = item

    def to_json(self) -> dict:
        shuffle = random.Random(self.seed + 1)  # reservoirs in random order, so `combine` can draw
        hists = {}
        for name, h in self.hists.items():
            mean = round(h["sum"] / h["n"], 4) if h["n"] else None
            hists[name] = {
                "edges": BINS[name],
                "counts": h["counts"],
                "n": h["n"],
                "sum": round(h["sum"], 6),
                "mean": mean,
            }
        return {
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "seen": self.kept + sum(self.skipped.values()),
            "histograms": hists,
            "kept_samples": shuffle.sample(self.kept_samples, len(self.kept_samples)),
            "dropped_with_image": self.dropped_with_image,
            "dropped_samples": shuffle.sample(self.dropped_samples, len(self.dropped_samples)),
        }


def combine(reports: list[dict], seed: int = 0, **extra) -> dict:
    """One report of several (`to_json` or `combine` outputs): counts and histograms added; each
    reservoir drawn without replacement from the others, weighted by what each one stands for, so
    it is again a uniform sample of the whole."""
    rng = random.Random(seed)
    skipped: Counter = Counter()
    hists = {
        name: {"edges": edges, "counts": [0] * len(edges), "n": 0, "sum": 0.0} for name, edges in BINS.items()
    }
    for report in reports:
        skipped.update(report.get("skipped", {}))
        for name, h in report.get("histograms", {}).items():
            if name in hists and h.get("edges") == BINS[name]:
                hists[name]["counts"] = [
                    a + b for a, b in zip(hists[name]["counts"], h["counts"], strict=True)
                ]
                hists[name]["n"] += h["n"]
                hists[name]["sum"] += h["sum"]
    for h in hists.values():
        h["mean"] = round(h["sum"] / h["n"], 4) if h["n"] else None
        h["sum"] = round(h["sum"], 6)
    kept = sum(r.get("kept", 0) for r in reports)

    def draw(items: str, counts: list[int]) -> list[dict]:
        left, taken, out = list(counts), [0] * len(reports), []
        while len(out) < GRID and sum(left) > 0:
            i = rng.choices(range(len(reports)), weights=left)[0]
            pool = reports[i].get(items, [])
            if taken[i] < len(pool):
                out.append(pool[taken[i]])
            taken[i] += 1
            left[i] -= 1
        return out

    return {
        "kept": kept,
        "skipped": dict(sorted(skipped.items())),
        "seen": kept + sum(skipped.values()),
        "histograms": hists,
        "kept_samples": draw("kept_samples", [r.get("kept", 0) for r in reports]),
        "dropped_with_image": sum(r.get("dropped_with_image", 0) for r in reports),
        "dropped_samples": draw("dropped_samples", [r.get("dropped_with_image", 0) for r in reports]),
        **extra,
    }


def discount(report: dict, dropped: list[tuple[str, str, str, dict]], reason: str) -> dict:
    """`report` (a `combine` output, changed in place) less kept samples dropped after it was made,
    each (shard, key, transcript, json): counted under `reason` instead, taken out of the histograms,
    and out of the kept reservoir (whose grid could no longer show them)."""
    if not dropped:
        return report
    report["kept"] -= len(dropped)
    skipped = Counter(report["skipped"])
    skipped[reason] += len(dropped)
    report["skipped"] = dict(sorted(skipped.items()))  # "seen" stays: these images were seen
    hists = report["histograms"]
    for _, _, text, meta in dropped:
        for name, value in sample_values(text, meta).items():
            h = hists[name]
            # Not below zero: a part without report.json adds counts but no histograms.
            if value is not None and h["counts"][i := _bin(name, value)] > 0:
                h["counts"][i] -= 1
                h["n"] -= 1
                h["sum"] -= value
    for h in hists.values():
        h["sum"] = round(h["sum"], 6)
        h["mean"] = round(h["sum"] / h["n"], 4) if h["n"] else None
    gone = {(shard, key) for shard, key, _, _ in dropped}
    report["kept_samples"] = [s for s in report["kept_samples"] if (s["shard"], s["key"]) not in gone]
    return report


class Progress:
    """A line on stderr every PROGRESS_EVERY seconds while a build runs: images done, kept, images/s."""

    def __init__(self, total: int | None = None, label: str = ""):
        self.total, self.label = total, label
        self.done = self.kept = 0
        self.start = self.last = time.monotonic()

    def tick(self, result: Sample | Skipped) -> None:
        self.done += 1
        self.kept += isinstance(result, Sample)
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            of = f" of {self.total}" if self.total else ""
            rate = self.done / max(now - self.start, 1e-9)
            print(
                f"{self.label}{self.done}{of} images ({self.kept} kept), {rate:.1f} images/s", file=sys.stderr
            )


# -- files -------------------------------------------------------------------------------------------


def clear_old_report(out: Path, overwrite: bool) -> None:
    """Before a build replaces `out`: a shard folder glyphgen wrote may also hold its report, which
    `overwrite` removes (the build writes a new one); without `overwrite` it is refused as a shard
    folder is. Anything else is left for the shard writer to judge."""
    if not out.is_dir() or out.is_symlink():
        return
    foreign = foreign_entries(out)
    ours = [n for n in foreign if n in REPORT_FILES or n.removesuffix(".tmp") in REPORT_FILES]
    if not ours or len(ours) < len(foreign):
        return
    if not overwrite:
        raise ShardsExistError(f"{out}: already holds shards; pass --overwrite to replace them")
    for name in ours:
        (out / name).unlink()


def write_report(folder: str | Path, report: dict) -> None:
    """report.json and report.png in `folder`, each written under a temporary name and renamed."""
    folder = Path(folder)
    # One line per list of numbers (the histograms), so the file reads well.
    text = re.sub(
        r"\[\s+([-0-9.,e\s]+?)\s+\]",
        lambda m: f"[{' '.join(m.group(1).split())}]",
        json.dumps(report, indent=1),
    )
    for name, write in (
        (REPORT_JSON, lambda tmp: tmp.write_text(text + "\n")),
        (REPORT_PNG, lambda tmp: render(folder, report).save(tmp, format="PNG")),
    ):
        write_atomically(folder / name, write, tmp=folder / f"{name}.tmp")


def read_report(folder: str | Path) -> dict | None:
    path = Path(folder) / REPORT_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kept_images(folder: Path, picks: list[dict]) -> list[Image.Image | None]:
    """The pngs of the picked samples, read from their shards (None where one is not found)."""
    wanted: dict[str, set[str]] = {}
    for p in picks:
        wanted.setdefault(p["shard"], set()).add(p["key"])
    found: dict[tuple[str, str], bytes] = {}
    for shard, keys in wanted.items():
        path = folder / shard
        if not path.is_file():
            continue
        for key, parts in shard_members(path, ["png"]).items():
            if key in keys:
                found[shard, key] = parts["png"]
    return [
        Image.open(io.BytesIO(found[p["shard"], p["key"]])) if (p["shard"], p["key"]) in found else None
        for p in picks
    ]


def _histograms(report: dict) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.6), dpi=80)
    FigureCanvasAgg(fig)
    for i, (name, title) in enumerate(TITLES.items()):
        ax = fig.add_subplot(2, 2, i + 1)
        h = report["histograms"][name]
        edges = h["edges"]
        width = edges[1] - edges[0]
        ax.bar(edges, h["counts"], width=width, align="edge", color="#4878a8", edgecolor="white")
        mean = f", mean {h['mean']:.3g}" if h["mean"] is not None else ""
        ax.set_title(f"{title} (n={h['n']}{mean})", fontsize=10)
        ax.set_xlim(edges[0], edges[-1] + width)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    return Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")


def _grid(images: list[Image.Image], captions: list[str]) -> Image.Image:
    from glyphgen.data.preview import save_grid

    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(images, captions, Path(tmp) / "grid.png", cell=96)
        with Image.open(path) as grid:
            return grid.convert("RGB")


def render(folder: str | Path, report: dict) -> Image.Image:
    """report.png: a heading with the counts, the histograms, the kept and the dropped grids."""
    font = ImageFont.load_default(size=14)
    skips = ", ".join(f"{n} {r}" for r, n in report["skipped"].items()) or "none"
    parts: list[tuple[str, Image.Image | None]] = [
        (f"kept {report['kept']} of {report['seen']} images; skipped: {skips}", _histograms(report))
    ]
    picks = report["kept_samples"]
    kept = [(img, p["text"]) for img, p in zip(_kept_images(Path(folder), picks), picks, strict=True) if img]
    if kept:
        parts.append((f"{len(kept)} random kept samples", _grid(*map(list, zip(*kept, strict=True)))))
    dropped = report["dropped_samples"]
    if dropped:
        images = [Image.open(io.BytesIO(base64.b64decode(d["thumb"]))) for d in dropped]
        captions = [f"{d['reason']}\n{d['detail'].replace(': ', chr(10), 1)}" for d in dropped]
        parts.append((f"{len(dropped)} random dropped samples, with the reason", _grid(images, captions)))
    width = max(img.width for _, img in parts) + 16
    height = sum(img.height + 30 for _, img in parts) + 8
    sheet = Image.new("RGB", (width, height), "white")
    draw, y = ImageDraw.Draw(sheet), 8
    for heading, img in parts:
        draw.text((8, y), heading, fill="black", font=font)
        sheet.paste(img, (8, y + 24))
        y += img.height + 30
    return sheet
