"""Named model sizes, like DiT's registry: each name is a function returning a fresh `UNetConfig`.

Every size keeps every mechanism on (weave attention, self-attention, relative bias, line
embedding, timestep-aware encoder), so the tiny ones test the same code paths the big ones train.
`SANDWICH_BASE` names the base each super-resolution size is warm-started from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from glyphgen.config import load_config
from glyphgen.models.text_encoder import TextEncoderConfig
from glyphgen.models.unet import UNet, UNetConfig


def _tiny_text() -> TextEncoderConfig:
    return TextEncoderConfig(
        width=64, depth=2, heads=4, max_length=96, max_lines=8, rel_buckets=16, rel_max_distance=32
    )


def tiny() -> UNetConfig:
    """32 px, 1.9M parameters: the tests, and the GPU ablation rows measured so far."""
    return UNetConfig(
        resolution=32,
        model_channels=32,
        channel_mult=[1, 2, 2],
        num_res_blocks=1,
        attention_resolutions=[16, 8],
        text_resolutions=[16, 8],
        head_channels=16,
        text=_tiny_text(),
    )


def _sr64(base: UNetConfig) -> UNetConfig:
    """32 -> 64 px super-resolution: a 32 px base with one more outer level."""
    return dataclasses.replace(base, resolution=64, channel_mult=[1, 1, 2, 2], superres=True)


def tiny_sr() -> UNetConfig:
    """32 -> 64 px super-resolution sandwiched around `tiny`."""
    return _sr64(tiny())


def micro() -> UNetConfig:
    """`tiny` at half the width (16 channels, 0.67M parameters) with self-attention only at 8x8: the
    CPU pipeline and learning rungs. On 2 cores a step costs 0.32 of tiny's and learns about as
    much, so it writes sooner per second (BENCHMARKS.md "The rung on one day")."""
    return dataclasses.replace(tiny(), model_channels=16, attention_resolutions=[8])


def micro_sr() -> UNetConfig:
    """32 -> 64 px super-resolution sandwiched around `micro`."""
    return _sr64(micro())


def base64() -> UNetConfig:
    """64 px base: the first size of frank that could write; the GPU quality run trains this one."""
    return UNetConfig(
        resolution=64,
        model_channels=128,
        channel_mult=[1, 2, 3, 4],
        num_res_blocks=2,
        attention_resolutions=[32, 16, 8],
        text_resolutions=[32, 16, 8],
    )


def base128() -> UNetConfig:
    """128 px base at frank's size: 192 channels, mult (1,2,2,4,4), attention at 32/16/8."""
    return UNetConfig()


def sr256() -> UNetConfig:
    """128 -> 256 px super-resolution: `base128` sandwiched in one more outer level."""
    return UNetConfig(resolution=256, channel_mult=[1, 1, 2, 2, 4, 4], superres=True)


MODELS: dict[str, Callable[[], UNetConfig]] = {
    "tiny": tiny,
    "tiny-sr": tiny_sr,
    "micro": micro,
    "micro-sr": micro_sr,
    "base64": base64,
    "base128": base128,
    "sr256": sr256,
}
SANDWICH_BASE: dict[str, str] = {"tiny-sr": "tiny", "micro-sr": "micro", "sr256": "base128"}


def model_config(name: str) -> UNetConfig:
    if name not in MODELS:
        raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]()


def sized_model_config(name: str, overrides: Mapping[str, Any] | None = None) -> UNetConfig:
    """The named size with `overrides` (a nested dict of its fields, e.g. a stage config's `model`)
    applied and validated; errors name the key. Training and export both derive the network from this."""
    dotlist = [f"{k}={v}" for k, v in _flatten(overrides or {})]
    return load_config(UNetConfig, overrides=dotlist, defaults=model_config(name))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def create_model(cfg: UNetConfig | str) -> UNet:
    return UNet(model_config(cfg) if isinstance(cfg, str) else cfg)
