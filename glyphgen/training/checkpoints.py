"""The atomic checkpoint writer; reading checkpoints lives in the Lightning-free `glyphgen.checkpoint_io`
(re-exported here for the training code)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from glyphgen.checkpoint_io import ema_state, read_checkpoint

__all__ = ["AtomicCheckpointIO", "ema_state", "read_checkpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it into place, so a crash mid-write never leaves a
    broken checkpoint (in particular `last.ckpt`) behind."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
