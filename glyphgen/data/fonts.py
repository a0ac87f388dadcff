"""Font discovery: which font files exist, and which characters each one can draw
(docs/architecture.md, "Synthetic shards (stage 1)").

fontTools reads every font's cmap so that a text is only ever drawn with a font that has a real,
inked glyph for each of its characters (no tofu boxes, no blank placeholders). Fonts come from the
standard system folders, from `font-*` PyPI distributions (so a fresh machine has fonts to draw
with), and from any folder the config names. Broken files are skipped with one warning each.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageFont

from glyphgen.config import require_path

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
SYSTEM_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:\\Windows\\Fonts",
)
_MAX_FONT_BYTES = 64 << 20  # the largest real fonts (CJK, emoji) are ~20-30 MiB
# Size at which Pillow checks that each glyph leaves ink: big enough that thin strokes show up.
_INK_CHECK_SIZE = 32
# Pillow's basic layout: fast, and the same on every machine (raqm may or may not be installed).
_BASIC = ImageFont.Layout.BASIC


@dataclass
class FontConfig:
    font_dirs: list[str] = field(default_factory=list)
    """Extra folders scanned (recursively) for .ttf/.otf/.ttc files; each must exist."""
    system_fonts: bool = True
    """Also scan the standard system font folders (Linux, macOS, Windows) that exist here."""
    package_fonts: bool = True
    """Also use fonts shipped inside installed PyPI distributions named `font-*` (e.g. font-lato)."""
    include: list[str] = field(default_factory=list)
    """Use only fonts whose postscript name or file name contains one of these (case-insensitive),
    e.g. ["FredokaOne"] for a single face; empty: every font found. `exclude` still applies."""
    exclude: list[str] = field(default_factory=lambda: ["AmaticSC", "Hairline"])
    """Skip fonts whose postscript name or file name contains any of these (case-insensitive).
    Default: small-caps faces (they draw lower case as capitals, so the transcript's case would be
    wrong) and hairline weights (strokes far thinner than a pixel at the sizes drawn)."""

    def __post_init__(self):
        for i, folder in enumerate(self.font_dirs):
            require_path(folder, f"font_dirs.{i}", kind="folder")


@dataclass(frozen=True)
class FontInfo:
    """A usable font face: its file, postscript name and the alphabet characters it can draw."""

    path: str
    name: str
    coverage: frozenset[str]


# Per-file results keyed by (path, size, mtime, alphabet): None for a broken file (warned once).
_FILE_CACHE: dict[tuple, FontInfo | None] = {}
_DISCOVER_CACHE: dict[tuple, list[FontInfo]] = {}


def _font_files(folder: Path) -> list[Path]:
    files = []
    for root, _dirs, names in os.walk(folder, followlinks=True):
        files.extend(Path(root, n) for n in names if n.lower().endswith(FONT_SUFFIXES))
    return files


def _package_font_files() -> list[Path]:
    files = []
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("font-", "font_")):
            files.extend(
                Path(dist.locate_file(f)) for f in dist.files or () if f.name.lower().endswith(FONT_SUFFIXES)
            )
    return files


@lru_cache(maxsize=1)
def _package_fonts_by_name() -> dict[str, Path]:
    """{file name: path} of the fonts the installed `font-*` distributions ship (the first of each
    name). Cached: every model with a glyph canvas looks its font up here."""
    fonts: dict[str, Path] = {}
    for path in _package_font_files():
        fonts.setdefault(path.name, path)
    return fonts


def package_font(file_name: str) -> str:
    """The path of the font file named `file_name` that an installed `font-*` distribution ships."""
    path = _package_fonts_by_name().get(file_name)
    if path is None:
        raise FileNotFoundError(f"no installed font-* package ships {file_name}: reinstall glyphgen")
    return str(path)


def package_font_names() -> list[str]:
    """File names of the fonts the installed `font-*` distributions ship, sorted."""
    return sorted(_package_fonts_by_name())


def _font_name(tt: TTFont, path: Path) -> str:
    names = tt["name"]
    return names.getDebugName(6) or names.getDebugName(4) or path.stem


def _coverage(tt: TTFont, font: ImageFont.FreeTypeFont, alphabet: str) -> frozenset[str]:
    cmap = tt.getBestCmap() or {}
    covered = set()
    for ch in alphabet:
        if ch in " \n":
            continue
        glyph = cmap.get(ord(ch))
        if glyph is None or glyph == ".notdef":
            continue
        # A mapped glyph can still be an empty placeholder; only inked glyphs count.
        x0, y0, x1, y1 = font.getbbox(ch)
        if x1 > x0 and y1 > y0:
            covered.add(ch)
    if cmap.get(ord(" ")) not in (None, ".notdef"):
        covered.update(c for c in " \n" if c in alphabet)  # newlines are drawn as line breaks
    return frozenset(covered)


def _read_font(path: Path, alphabet: str) -> FontInfo | None:
    """The font's FontInfo, or None (after one warning naming the file) when it cannot be used."""
    try:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, alphabet)
    except OSError as e:
        warnings.warn(f"skipping font {path}: {e.strerror or e}", stacklevel=3)
        return None
    if key in _FILE_CACHE:
        return _FILE_CACHE[key]
    info = None
    try:
        if stat.st_size == 0:
            raise ValueError("empty file")
        if stat.st_size > _MAX_FONT_BYTES:  # fonts are untrusted input (docs/architecture.md, "Safety")
            raise ValueError(f"larger than {_MAX_FONT_BYTES >> 20} MiB")
        # fontNumber=0: the first face of a .ttc collection (ignored for single-face files). Our
        # own file handle, so it is closed even when fontTools fails half-way through parsing.
        with open(path, "rb") as fh, TTFont(fh, lazy=True, fontNumber=0) as tt:
            # Only glyph ids matter (0 is .notdef): naming glyphs by id skips parsing 'post' names.
            tt.setGlyphOrder([".notdef", *(f"gid{i}" for i in range(1, tt["maxp"].numGlyphs))])
            pil = ImageFont.truetype(str(path), _INK_CHECK_SIZE, index=0, layout_engine=_BASIC)
            info = FontInfo(str(path), _font_name(tt, path), _coverage(tt, pil, alphabet))
    except Exception as e:  # any parse error means "not a usable font", never a crash
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        warnings.warn(f"skipping font {path}: not a readable font ({reason})", stacklevel=3)
    _FILE_CACHE[key] = info
    return info


def _prefer(a: FontInfo, b: FontInfo) -> FontInfo:
    """Of two files with the same face, keep the .ttf (Pillow's TrueType hinting), then the first path."""
    return min(a, b, key=lambda f: (not f.path.lower().endswith(".ttf"), f.path))


def _named(info: FontInfo, parts: list[str]) -> bool:
    """Whether the font's postscript name or file name contains any of `parts` (case-insensitive)."""
    hay = f"{info.name} {Path(info.path).name}".lower()
    return any(x.lower() in hay for x in parts)


def discover_fonts(cfg: FontConfig, alphabet: str) -> list[FontInfo]:
    """Every usable font face, deduplicated by postscript name, sorted by name then path.
    Results are cached in-process. Raises ValueError when no usable font is found."""
    key = (
        tuple(cfg.font_dirs),
        cfg.system_fonts,
        cfg.package_fonts,
        tuple(cfg.include),
        tuple(cfg.exclude),
        alphabet,
    )
    if key in _DISCOVER_CACHE:
        return list(_DISCOVER_CACHE[key])
    groups: list[tuple[str | None, list[Path]]] = [
        (d, _font_files(Path(d).expanduser())) for d in cfg.font_dirs
    ]
    if cfg.system_fonts:
        groups += [(None, _font_files(p)) for d in SYSTEM_FONT_DIRS if (p := Path(d).expanduser()).is_dir()]
    if cfg.package_fonts:
        groups.append((None, _package_font_files()))

    by_name: dict[str, FontInfo] = {}
    seen: set[str] = set()
    for folder, files in groups:
        usable = 0
        for path in sorted(files):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            info = _read_font(path, alphabet)
            if info is None:
                continue
            usable += 1
            if (not cfg.include or _named(info, cfg.include)) and not _named(info, cfg.exclude):
                by_name[info.name] = _prefer(by_name[info.name], info) if info.name in by_name else info
        if folder is not None and usable == 0:
            warnings.warn(f"font folder {folder} holds no usable .ttf/.otf/.ttc fonts", stacklevel=2)

    fonts = sorted(by_name.values(), key=lambda f: (f.name, f.path))
    if not fonts and cfg.include:
        raise ValueError(f"no usable font matches fonts.include {list(cfg.include)}: see `glyphgen fonts`")
    if not fonts:
        raise ValueError(
            "no usable fonts found: install a font package (pip install font-roboto), "
            "or name a folder of .ttf/.otf files in fonts.font_dirs"
        )
    _DISCOVER_CACHE[key] = fonts
    return list(fonts)


def fonts_covering(fonts: list[FontInfo], text: str) -> list[FontInfo]:
    """The fonts that can draw every character of `text`: a text is never drawn with a font that
    lacks one of its glyphs."""
    needed = set(text)
    return [f for f in fonts if f.coverage.issuperset(needed)]


def _kind(code: int) -> int:
    ch = chr(code)
    return 0 if ch.isupper() else 1 if ch.islower() else 2 if ch.isdigit() else 3


def _show(ch: str) -> str:
    return "SP" if ch == " " else ch if ch.isprintable() else repr(ch)[1:-1]


def _compact(chars: str) -> str:
    """Characters as short runs ("0-9 A-Z [-` SP \\n"), so a missing-glyph list stays one line.
    A run never mixes capitals, small letters, digits and symbols."""
    codes = sorted(set(map(ord, chars)))
    parts, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1 and _kind(codes[j + 1]) == _kind(codes[i]):
            j += 1
        run = [_show(chr(c)) for c in codes[i : j + 1]]
        parts.extend([f"{run[0]}-{run[-1]}"] if len(run) >= 3 else run)
        i = j + 1
    return " ".join(parts)


def format_font_table(fonts: list[FontInfo], alphabet: str) -> str:
    """A listing for `glyphgen fonts`: name, alphabet coverage, missing characters and path."""
    total = len(set(alphabet))
    rows = [("name", "covered", "missing", "path")]
    for f in fonts:
        missing = "".join(c for c in dict.fromkeys(alphabet) if c not in f.coverage)
        rows.append((f.name, f"{total - len(missing)}/{total}", _compact(missing) or "-", f.path))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    full = sum(1 for f in fonts if len(f.coverage & set(alphabet)) == total)
    plural = "" if len(fonts) == 1 else "s"
    lines.append(f"{len(fonts)} font{plural}, {full} cover the whole alphabet ({total} characters)")
    return "\n".join(lines)


@lru_cache(maxsize=2048)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """The font file at `path` at `size` pixels, cached: every renderer asks for the same few sizes
    of each font again and again. Basic layout: fast, and identical on machines with and without
    libraqm."""
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def wrap_line(line: str, width_of: Callable[[str], float], width: float) -> list[str]:
    """Greedy word wrap: as many words per row as fit in `width` (as measured by `width_of`); a
    word wider than `width` stays on a row of its own (the caller decides what to do with it)."""
    words = line.split(" ")
    rows, current = [], words[0]
    for word in words[1:]:
        candidate = f"{current} {word}"
        if width_of(candidate) <= width:
            current = candidate
        else:
            rows.append(current)
            current = word
    rows.append(current)
    return rows
