"""A progress bar over sampling steps, on stderr: tqdm when it is installed, else a plain text bar.

Sampling calls `bar(done, total)` with the steps of the whole call (every batch), see
`glyphgen.inference.sample.generate`.
"""

from __future__ import annotations

import sys


class ProgressBar:
    """`with ProgressBar("base") as bar: bundle.sample(..., progress=bar)`."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled = desc, enabled
        self._tqdm = None
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain(done, total)
            return
        if self._tqdm is None:
            self._tqdm = tqdm(total=total, desc=self.desc, unit="step", leave=False, file=sys.stderr)
        self._tqdm.update(done - self._tqdm.n)

    def _plain(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent != self._shown:  # redraw only when the bar changes
            self._shown = percent
            filled = percent // 5
            sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total} steps")
            sys.stderr.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._shown >= 0:
            sys.stderr.write("\n")
            self._shown = -1

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
