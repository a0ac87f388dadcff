"""The inference bundle format: a folder holding `model.safetensors` and `config.yaml`.

`config.yaml` is everything needed to rebuild the network, the diffusion process and the tokenizer,
and nothing from the trainer (optimizer, data, schedule of checkpoints). The weights are the EMA
network's state dict, keys as in `UNet.state_dict()`. Never pickle: safetensors and YAML only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from glyphgen.checkpoint_io import DTYPES
from glyphgen.config import ConfigError, load_config, require, save_config
from glyphgen.diffusion import DiffusionConfig
from glyphgen.models.unet import UNetConfig
from glyphgen.text.alphabet import SPECIALS
from glyphgen.text.tokenizer import TokenizerConfig

FORMAT = "glyphgen-bundle/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


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
    """The bundle's config; one-line errors for a missing folder or file, an interpolation or a bad
    value."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: bundle folder not found")
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {CONFIG}, not a glyphgen bundle (make one with glyphgen export)"
        )
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # YAML errors, refused tags, alias bombs, a malformed ${: never a traceback
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    refuse_interpolations(raw, path)
    return load_config(BundleConfig, [path])


def refuse_interpolations(node: Any, where: str | Path, key: str = "") -> None:
    """Stored configs (a bundle's config.yaml, a checkpoint's hyperparameters) are data: refuse, in one
    line naming `where` and the key, any `${...}` that OmegaConf would resolve (`oc.env` reads the
    environment, `oc.decode` parses it). The value is never shown: it may be what it would leak."""
    if isinstance(node, str):
        if "${" in node:
            raise ConfigError(
                f"{where}: {key or 'value'}: holds an interpolation (${{...}}); a stored config is data, "
                "never resolved"
            )
    elif isinstance(node, Mapping):
        for k, v in node.items():
            name = f"{key}.{k}" if key else str(k)
            refuse_interpolations(str(k), where, name)
            refuse_interpolations(v, where, name)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            refuse_interpolations(v, where, f"{key}[{i}]")
