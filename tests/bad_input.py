"""The bad-input corpus: one row per defect a user or an attacker can reach through the CLI.

A row builds its bad input under a fresh folder, runs `glyphgen ARGV` there (in-process), and expects
either one `glyphgen: error:` line naming the file, key or value, or a counted skip with a warning.
`check` then asserts what must still hold (the user's files untouched, nothing half-written).
tests/test_bad_input.py runs every row; add a row here when you find the next defect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One bad input, the command that meets it, and the outcome it must get."""

    id: str
    """Short, unique, kebab-case: the test id."""
    setup: Callable[..., list[str]]
    """Writes the bad input under the given folder (the working directory of the run) and returns
    the glyphgen argv, e.g. ["make-shards", "synthetic", "--count", "4", "--out", "important"]."""
    expect: str
    """"error": exit 2 with one `glyphgen: error:` line; "skip": exit 0 with a counted-skip warning."""
    fragments: tuple[str, ...]
    """Text that the error line (or, for "skip", stderr or the warnings) must contain."""
    check: Callable[[Path], None] | None = None
    """Assertions on the folder after the run (e.g. the user's files still there, byte-identical)."""
    bundles: bool = False
    """The row needs trained bundles: `setup(folder, bundles)` gets {"base": PATH, "superres": PATH}
    (tiny exported bundles, shared by every such row; copy one before changing it)."""
