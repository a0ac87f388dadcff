"""Writing files and folders so that a crash never leaves one half-written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomically(
    path: str | Path, write: Callable[[Path], object], tmp: Path | None = None, fsync: bool = False
) -> None:
    """Call `write(tmp)` to write a temporary file beside `path`, then rename it onto `path`: readers
    see the old file or the whole new one. `tmp` defaults to a hidden name with this process's id;
    shard writers pass `NAME.tmp`, which their resume recognises. With `fsync` the bytes reach the
    disk before the rename. The temporary file is removed if `write` fails."""
    path = Path(path)
    tmp = tmp or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(new: Path, out: Path, check: Callable[[], object] | None = None) -> None:
    """Rename the finished folder `new` onto `out`. An existing `out` is first judged by `check` (it
    may have changed since the write began), moved aside to `NAME.old-PID`, and removed only once
    `new` is in place, so a crash leaves either folder whole."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        if check is not None:
            check()
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
