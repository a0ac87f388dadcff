"""Reading glyphgen stage checkpoints safely, and the atomic checkpoint writer.

Checkpoints are loaded with `torch.load(weights_only=True)`: hyperparameters are stored as plain
containers, so no pickle from a checkpoint ever runs code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def read_checkpoint(path: str | Path) -> dict:
    """A glyphgen stage checkpoint as a dict; a one-line error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unsafe pickle: all user-facing
        raise ValueError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("glyphgen", {}).get("kind") != "stage":
        raise ValueError(f"{path}: not a glyphgen training checkpoint (no glyphgen stage metadata)")
    return ckpt


def ema_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The EMA network's weights from a stage checkpoint (`ema.` prefix and any torch.compile
    `_orig_mod.` prefix removed)."""
    state = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith("ema."):
            state[key[len("ema.") :].replace("_orig_mod.", "")] = value
    if not state:
        raise ValueError("checkpoint holds no EMA weights")
    return state


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
