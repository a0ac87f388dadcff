"""`glyphgen export`: a stage checkpoint -> an inference bundle (DESIGN 5).

The bundle holds the EMA weights (cast to the chosen dtype) and a config with the network spelled
out in full, so loading it needs neither Lightning nor the stage config nor the named-size registry.
The folder is written beside its destination and renamed into place: an interrupted export leaves
nothing half-written, and an existing bundle is only replaced when asked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from glyphgen.checkpoint_io import ema_state, read_checkpoint
from glyphgen.config import load_config
from glyphgen.diffusion import DiffusionConfig
from glyphgen.inference.format import DTYPES, WEIGHTS, BundleConfig, check_tensors, write_config
from glyphgen.models.registry import sized_model_config
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import TokenizerConfig


def bundle_config(ckpt: dict, dtype: str, where: Path) -> BundleConfig:
    """The bundle config of a stage checkpoint: its network, diffusion and tokenizer, nothing else."""
    try:
        stage_cfg = ckpt["hyper_parameters"]["config"]
        model = sized_model_config(stage_cfg["model_size"], stage_cfg.get("model"))
        diffusion = load_config(DiffusionConfig, values=stage_cfg.get("diffusion") or {})
    except (KeyError, TypeError):
        raise ValueError(f"{where}: checkpoint has no stage config (hyper_parameters.config)") from None
    # The training core tokenizes with the default alphabet at the text encoder's context length.
    tokenizer = TokenizerConfig(max_length=model.text.max_length)
    return BundleConfig(
        stage=ckpt["glyphgen"].get("stage", stage_cfg.get("stage", "")),
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
    checkpoint: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False
) -> Path:
    """Write the bundle of `checkpoint` (a glyphgen stage checkpoint) to the folder `out`; returns it."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    checkpoint = Path(checkpoint)
    ckpt = read_checkpoint(checkpoint)
    cfg = bundle_config(ckpt, dtype, checkpoint)
    state = ema_state(ckpt)
    with torch.device("meta"):  # shapes only: the check below must not cost a real network
        expected = {k: v.shape for k, v in UNet(cfg.model).state_dict().items()}
    check_tensors(expected, {k: v.shape for k, v in state.items()}, checkpoint)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(cast_state(state, DTYPES[dtype]), tmp / WEIGHTS, metadata={"format": "pt"})
        write_config(cfg, tmp)
        # mkdtemp (and safetensors) make private files; a bundle is meant to be shared.
        tmp.chmod(0o777 & ~_umask())
        (tmp / WEIGHTS).chmod(0o666 & ~_umask())
        _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is moved aside first and removed only afterwards."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(new, out)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
