"""The inference bundle format (DESIGN 5): a folder holding `model.safetensors` and `config.yaml`.

`config.yaml` is everything needed to rebuild the network, the diffusion process and the tokenizer,
and nothing from the trainer (optimizer, data, schedule of checkpoints). The weights are the EMA
network's state dict, keys as in `UNet.state_dict()`. Never pickle: safetensors and YAML only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from glyphgen.config import load_config, require, save_config
from glyphgen.diffusion import DiffusionConfig
from glyphgen.models.unet import UNetConfig
from glyphgen.text.alphabet import SPECIALS
from glyphgen.text.tokenizer import TokenizerConfig

FORMAT = "glyphgen-bundle/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BundleConfig:
    format: str = FORMAT
    """Format marker and version; a bundle of another format is refused."""
    stage: str = "pretrain-synthetic"
    """The training stage the weights come from (pretrain-synthetic, finetune-real, superres)."""
    dtype: str = "fp32"
    """How the weights are stored: fp32, fp16 or bf16."""
    step: int = 0
    """Optimizer steps the stage had trained when the checkpoint was written."""
    model: UNetConfig = field(default_factory=UNetConfig)
    """The network, every field spelled out (no named size to resolve)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """The diffusion process and the sampling defaults (steps, sampler, guidance)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Alphabet and context length of the character tokenizer."""

    def __post_init__(self):
        require(self.format == FORMAT, "format", f"expected {FORMAT!r}, got {self.format!r}")
        require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        vocab = len(SPECIALS) + len(self.tokenizer.alphabet)
        require(
            vocab == self.model.text.vocab_size,
            "tokenizer.alphabet",
            f"gives {vocab} token ids but the model's text encoder has {self.model.text.vocab_size}",
        )
        require(
            self.tokenizer.max_length <= self.model.text.max_length,
            "tokenizer.max_length",
            f"{self.tokenizer.max_length} exceeds the text encoder's {self.model.text.max_length}",
        )


def write_config(cfg: BundleConfig, folder: Path) -> None:
    save_config(cfg, folder / CONFIG)


def read_config(folder: Path) -> BundleConfig:
    """The bundle's config; one-line errors for a missing folder or file or a bad value."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: bundle folder not found")
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {CONFIG}, not a glyphgen bundle (make one with glyphgen export)"
        )
    return load_config(BundleConfig, [path])


def check_tensors(
    expected: dict[str, torch.Size], found: dict[str, torch.Size], where: Path, shown: int = 3
) -> None:
    """Raise a one-line ValueError naming the first few keys when the stored tensors do not fit the
    network `config.yaml` describes (missing, unexpected, or of another shape)."""
    problems = []
    for label, keys in (
        ("missing", sorted(expected.keys() - found.keys())),
        ("unexpected", sorted(found.keys() - expected.keys())),
    ):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            problems.append(f"{len(keys)} {label} tensors: {', '.join(keys[:shown])}{more}")
    mismatched = [k for k in sorted(expected.keys() & found.keys()) if expected[k] != found[k]]
    if mismatched:
        detail = ", ".join(f"{k} {tuple(found[k])} vs {tuple(expected[k])}" for k in mismatched[:shown])
        problems.append(f"{len(mismatched)} tensors of another shape (stored vs config): {detail}")
    if problems:
        raise ValueError(f"{where}: weights do not match {CONFIG}: {'; '.join(problems)}")
