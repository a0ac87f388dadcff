"""The sandwich warm start (the frank system's last trick; docs/architecture.md, "The three stages").

A super-resolution U-Net with one more outer level than the trained base is the base "sandwiched"
between new bread: input block k of the base becomes input block k + N of the superres model (N =
the new level's blocks), and the middle, output blocks, time embedding, text encoder and position
embeddings load under their own names. The input conv, the new level and the output head stay new;
a glyph canvas is drawn from its font, never copied.

The mapping is explicit and checked: every base tensor is loaded or intentionally dropped, every
superres tensor is loaded or expected to be new, and shapes must agree; anything else is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from glyphgen.models.unet import DRAWN, ZERO_STARTED, UNet

_INPUT = re.compile(r"^input_blocks\.(\d+)\.")
_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.(\d+)\.")


@dataclass
class WarmStartReport:
    loaded: dict[str, str]
    """superres key -> base key, for every tensor copied."""
    new: list[str]
    """superres keys left at their fresh initialisation (the bread)."""
    dropped: list[str]
    """base keys intentionally not used (its input conv, output head and glyph canvas)."""

    def summary(self) -> str:
        return f"sandwich warm start: loaded {len(self.loaded)} tensors, {len(self.new)} new, {len(self.dropped)} base tensors dropped"


def _level_blocks(model: UNet) -> int:
    return model.cfg.num_res_blocks + 1


def map_base_key(key: str, shift: int) -> str | None:
    """Where a base tensor goes in the superres model; None for the intentionally dropped ones."""
    if key.startswith(("out.", "input_blocks.0.", *DRAWN)):
        return None
    m = _INPUT.match(key)
    if m:
        return f"input_blocks.{int(m.group(1)) + shift}.{key[m.end() :]}"
    return key


def _expected_new(
    key: str, base_inputs: int, base_outputs: int, shift: int, last_base_output_len: int
) -> bool:
    if key.startswith(("out.", "input_blocks.0.", *ZERO_STARTED, *DRAWN)):
        return True
    m = _INPUT.match(key)
    if m:
        return 1 <= int(m.group(1)) <= shift
    m = _OUTPUT.match(key)
    if m:
        block, layer = int(m.group(1)), int(m.group(2))
        # The base's top output block gains an upsampling ResBlock in the superres model.
        return block >= base_outputs or (block == base_outputs - 1 and layer >= last_base_output_len)
    return False


def check_sandwich(base: UNet, sr: UNet) -> None:
    b, s = base.cfg, sr.cfg
    same = (
        "model_channels",
        "num_res_blocks",
        "attention_resolutions",
        "text_resolutions",
        "head_channels",
        "text_attention",
        "mean_path",
        "text",
    )
    for name in same:
        if getattr(b, name) != getattr(s, name):
            raise ValueError(f"sandwich warm start: base and superres differ in {name}")
    if s.channel_mult[1:] != b.channel_mult or s.resolution != 2 * b.resolution:
        raise ValueError(
            "sandwich warm start: the superres model must be the base with one more outer level "
            f"(base channel_mult {b.channel_mult} at {b.resolution}px, superres {s.channel_mult} at {s.resolution}px)"
        )


def sandwich_warm_start(sr: UNet, base_state: dict[str, torch.Tensor], base: UNet) -> WarmStartReport:
    """Copy `base_state` (a state dict of `base`'s architecture) into `sr` in place; return the report."""
    check_sandwich(base, sr)
    shift = _level_blocks(sr)
    target = sr.state_dict()
    loaded: dict[str, str] = {}
    dropped: list[str] = []
    problems: list[str] = []
    for key, value in base_state.items():
        key = key.removeprefix("_orig_mod.")
        dest = map_base_key(key, shift)
        if dest is None:
            dropped.append(key)
        elif dest not in target:
            problems.append(f"base {key} -> {dest}: no such tensor in the superres model")
        elif target[dest].shape != value.shape:
            problems.append(
                f"base {key} -> {dest}: shape {tuple(value.shape)} != {tuple(target[dest].shape)}"
            )
        else:
            loaded[dest] = key
    last_len = len(base.output_blocks[-1])
    new = [k for k in target if k not in loaded]
    problems += [
        f"superres {k}: neither loaded nor part of the new outer level"
        for k in new
        if not _expected_new(k, len(base.input_blocks), len(base.output_blocks), shift, last_len)
    ]
    if problems:
        raise ValueError(f"sandwich warm start failed ({len(problems)} problems): " + "; ".join(problems[:5]))
    with torch.no_grad():
        for dest, key in loaded.items():
            target[dest].copy_(base_state.get(key, base_state.get(f"_orig_mod.{key}")))
    return WarmStartReport(loaded, new, dropped)
