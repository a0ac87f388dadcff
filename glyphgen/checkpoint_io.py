"""Reading glyphgen stage checkpoints safely, without Lightning (export, warm starts and resumes all
use it).

A checkpoint is data, never code: it is read with `torch.load(weights_only=True)`, whose unpickler
only builds tensors and plain containers (hyperparameters are stored as such). The argument is passed
explicitly because torch lets `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turn off only a *defaulted*
weights_only, never an explicit one.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from glyphgen.config import Choice

# torch's refusal opens with advice to load the file unsafely; the line naming the refused object
# is the one worth a user's reading.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_weights_only(path: str | Path) -> object:
    """Whatever torch file is at `path`, read by the weights-only unpickler onto the CPU; a one-line
    error for a missing, truncated, foreign or code-carrying file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unsafe pickle: all user-facing
        raise ValueError(f"{path}: not a readable checkpoint ({_reason(e)})") from None


def read_checkpoint(path: str | Path) -> dict:
    """A glyphgen stage checkpoint as a dict; a one-line error for a missing, truncated, foreign or
    code-carrying file."""
    path = Path(path)
    ckpt = load_weights_only(path)
    meta = ckpt.get("glyphgen") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != "stage":
        raise ValueError(f"{path}: not a glyphgen training checkpoint (no glyphgen stage metadata)")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: not a glyphgen training checkpoint (state_dict is not a dict of tensors)")
    return ckpt


def _reason(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, pickle.UnpicklingError):
        told = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
        return f"refused by the weights-only reader: {(told or lines or ['?'])[0][:200]}"
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


NETWORKS = {"ema": "ema.", "raw": "model."}
"""Which network of a stage checkpoint: the EMA average (what bundles hold by default) or the raw
trained weights, by their state-dict prefix."""


class Networks(Choice):
    """What grids and quality runs may score (a config's `weights`): one network or both."""

    ema = "ema"
    raw = "raw"
    both = "both"


def networks(choice: str) -> list[str]:
    """The networks a `Networks` value names."""
    return list(NETWORKS) if choice == "both" else [str(choice)]


def network_state(ckpt: dict, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The EMA (or, with `weights="raw"`, the trained) network's weights from a stage checkpoint
    (its prefix and any torch.compile `_orig_mod.` prefix removed)."""
    prefix = NETWORKS[weights]
    state = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith(prefix):
            state[key[len(prefix) :].replace("_orig_mod.", "")] = value
    if not state:
        raise ValueError(f"checkpoint holds no {weights} weights")
    return state


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The dtypes weights may be stored in (bundles), by name."""


def check_tensors(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    where: Path,
    shown: int = 3,
    described_by: str = "config.yaml",
) -> None:
    """Raise a one-line ValueError naming the first few keys when the stored tensors do not fit the
    network `described_by` describes (missing, unexpected, of another shape, or of a dtype the
    network cannot take), or naming the first tensor holding NaN or inf (it would sample black images).
    `expected` may be meta tensors: only their shapes and dtypes are read."""
    common = sorted(expected.keys() & found.keys())
    problems = []
    for label, keys, show in (
        ("missing tensors", sorted(expected.keys() - found.keys()), str),
        ("unexpected tensors", sorted(found.keys() - expected.keys()), str),
        (
            "tensors of another shape (stored vs config)",
            [k for k in common if expected[k].shape != found[k].shape],
            lambda k: f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}",
        ),
        (
            f"tensors of a dtype the network cannot take (weights are {', '.join(DTYPES)})",
            [k for k in common if not _holds(expected[k].dtype, found[k].dtype)],
            lambda k: f"{k} {str(found[k].dtype).removeprefix('torch.')}",
        ),
    ):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            problems.append(f"{len(keys)} {label}: {', '.join(map(show, keys[:shown]))}{more}")
    if problems:
        raise ValueError(f"{where}: weights do not match {described_by}: {'; '.join(problems)}")
    for k in common:
        if found[k].is_floating_point() and not torch.isfinite(found[k]).all():
            raise ValueError(f"{where}: tensor {k} holds NaN or infinite values; the weights are broken")


def _holds(expected: torch.dtype, stored: torch.dtype) -> bool:
    """Floating weights may be stored in any bundle dtype (they are cast on load); others must match."""
    return stored in DTYPES.values() if expected.is_floating_point else stored == expected
