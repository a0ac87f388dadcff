"""Reading glyphgen stage checkpoints safely, without Lightning (export and training both use it).

Checkpoints are loaded with `torch.load(weights_only=True)`: hyperparameters are stored as plain
containers, so no pickle from a checkpoint ever runs code.
"""

from __future__ import annotations

from pathlib import Path

import torch


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
