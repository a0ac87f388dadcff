"""Prompt files and the held-out prompt sets shipped with glyphgen.

A prompt file has one prompt per line; the two characters backslash and n inside a line mean a new
line of the prompt; blank lines and lines starting with `#` are ignored. Shipped sets, in
`glyphgen/eval/prompts/`:
- `words`: single English words, excluded from synthetic training text by default
  (`TextConfig.exclude_words_file` is this file);
- `random`: random strings of letters and digits (no look-alikes such as 0/O, 1/l/I);
- `posts`: 2-4 line posts made only of the held-out words.
This module imports nothing heavy: the data workers read the held-out word list through it.
"""

from __future__ import annotations

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
SHIPPED = ("words", "random", "posts")
HELD_OUT_WORDS = str(PROMPTS_DIR / "words.txt")
"""The word list synthetic text excludes by default, so the `words` set stays unseen in training."""


def prompt_file(name: str | Path) -> Path:
    """A prompt file path, or the shipped set of that name (words, random, posts)."""
    path = Path(name)
    if path.is_file():
        return path
    if str(name) in SHIPPED:
        return PROMPTS_DIR / f"{name}.txt"
    shipped = ", ".join(SHIPPED)
    raise FileNotFoundError(f"{name}: prompt file not found (or name a shipped set: {shipped})")


def unescape_newlines(text: str) -> str:
    """The two characters backslash and n, as typed in a shell or a prompt file, mean a new line."""
    return text.replace("\\n", "\n")


def parse_prompts(text: str) -> list[str]:
    """Prompts of a prompt file's contents (see the module docstring)."""
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.append(unescape_newlines(line))
    return prompts


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file (or of a shipped set, by name); an error when it holds none."""
    path = prompt_file(path)
    prompts = parse_prompts(path.read_text(encoding="utf-8"))
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line; blank lines and # comments are ignored)")
    return prompts
