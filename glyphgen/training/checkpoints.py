"""The checkpoint IO Lightning trains with: atomic writes, and reads through the weights-only
`glyphgen.checkpoint_io` reader (re-exported here for the training code)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from glyphgen.checkpoint_io import load_weights_only, network_state, read_checkpoint
from glyphgen.files import write_atomically

__all__ = ["AtomicCheckpointIO", "network_state", "read_checkpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it into place, so a crash mid-write never leaves a
    broken checkpoint (in particular `last.ckpt`) behind. Reads (a resume) are weights-only whatever
    Lightning asks for or the environment says: a checkpoint is data, never code."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """The checkpoint at `path`, on the CPU (Lightning moves it where it belongs). Not only stage
        checkpoints come here: ddp_spawn hands its weights back to the main process in a file."""
        return load_weights_only(path)
