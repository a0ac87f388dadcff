"""`glyphgen export`: a stage checkpoint -> an inference bundle (docs/architecture.md, "Export: the bundle").

The bundle holds the EMA weights (cast to the chosen dtype) and a config with the network spelled
out in full, so loading it needs neither Lightning nor the stage config nor the named-size registry.
The folder is written beside its destination and renamed into place: an interrupted export leaves
nothing half-written; an existing bundle is only replaced when asked, and nothing but a bundle ever is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from glyphgen.checkpoint_io import DTYPES, NETWORKS, check_tensors, network_state, read_checkpoint
from glyphgen.config import load_config
from glyphgen.diffusion import DiffusionConfig
from glyphgen.files import replace_folder
from glyphgen.inference.format import (
    CONFIG,
    WEIGHTS,
    BundleConfig,
    read_config,
    refuse_interpolations,
    write_config,
)
from glyphgen.models.registry import sized_model_config
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import TokenizerConfig


def bundle_config(ckpt: dict, dtype: str, where: Path) -> BundleConfig:
    """The bundle config of a stage checkpoint: its network, diffusion and tokenizer, nothing else.
    The stored config is data: an interpolation in what the bundle takes from it is refused, never
    resolved."""
    hyper = ckpt.get("hyper_parameters")
    stage_cfg = hyper.get("config") if isinstance(hyper, dict) else None
    if not isinstance(stage_cfg, dict):
        raise ValueError(f"{where}: checkpoint has no stage config (hyper_parameters.config)")
    taken = {key: stage_cfg.get(key) for key in ("model_size", "model", "diffusion")}
    taken["stage"] = ckpt["glyphgen"].get("stage", stage_cfg.get("stage", ""))
    refuse_interpolations(taken, where, "hyper_parameters.config")
    for key, kind in {
        "model_size": str,
        "stage": str,
        "model": dict | None,
        "diffusion": dict | None,
    }.items():
        if not isinstance(taken[key], kind):
            what = "name" if kind is str else "mapping"
            raise ValueError(f"{where}: {key}: not a {what} but a {type(taken[key]).__name__}")
    model = sized_model_config(taken["model_size"], taken["model"])
    diffusion = load_config(DiffusionConfig, values=taken["diffusion"] or {})
    # The training core tokenizes with the default alphabet at the text encoder's context length.
    tokenizer = TokenizerConfig(max_length=model.text.max_length)
    return BundleConfig(
        stage=taken["stage"],
        dtype=dtype,
        step=int(ckpt.get("global_step", 0)),
        model=model,
        diffusion=diffusion,
        tokenizer=tokenizer,
    )


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to `dtype` (integer buffers keep theirs), contiguous and unshared as
    safetensors requires."""
    return {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in state.items()
    }


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    dtype: str = "fp32",
    overwrite: bool = False,
    weights: str = "ema",
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the bundle of `checkpoint` (a glyphgen stage checkpoint) to the folder `out`; returns it.
    `weights` is "ema" (the averaged network, the default) or "raw" (the trained network as it was
    saved: on a short run the average may still lag it). `state`, when given, is written instead:
    other weights for the checkpoint's network, such as an average rebuilt after training."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if weights not in NETWORKS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(NETWORKS)}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
        reason = _not_a_bundle(out)
        if reason:
            raise FileExistsError(
                f"{out}: not a glyphgen bundle ({reason}); --overwrite replaces only bundles"
            )
    checkpoint = Path(checkpoint)
    ckpt = read_checkpoint(checkpoint)
    cfg = bundle_config(ckpt, dtype, checkpoint)
    state = network_state(ckpt, weights) if state is None else state
    with torch.device("meta"):  # shapes and dtypes only: the check below must not cost a real network
        expected = UNet(cfg.model).state_dict()
    check_tensors(expected, state, checkpoint)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(cast_state(state, DTYPES[dtype]), tmp / WEIGHTS, metadata={"format": "pt"})
        write_config(cfg, tmp)
        # mkdtemp (and safetensors) make private files; a bundle is meant to be shared.
        tmp.chmod(0o777 & ~_umask())
        (tmp / WEIGHTS).chmod(0o666 & ~_umask())
        replace_folder(tmp, out)  # an existing `out` is a bundle: see `_not_a_bundle`
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _not_a_bundle(out: Path) -> str | None:
    """Why `out` is not a glyphgen bundle (None when it is): a folder holding exactly a bundle's config
    and weights, whose config reads as one. --overwrite replaces nothing else, so a user's files are
    never deleted."""
    if out.is_symlink() or not out.is_dir():
        return "not a folder"
    others = sorted(p.name for p in out.iterdir() if p.name not in (CONFIG, WEIGHTS))
    if others:
        return f"it also holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}"
    if not (out / WEIGHTS).is_file():
        return f"no {WEIGHTS}"
    try:
        read_config(out)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
