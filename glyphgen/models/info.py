"""Parameter counts and forward FLOPs of a model configuration (`glyphgen model-info`)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from glyphgen.models.unet import UNet, UNetConfig
from glyphgen.text.tokenizer import BOS, EOS


def count_parameters(module: torch.nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def example_inputs(cfg: UNetConfig, batch: int = 1, text_length: int = 64) -> dict:
    """Random inputs of the right shapes: noisy images, timesteps, a text of `text_length` tokens."""
    r = cfg.resolution
    length = min(text_length, cfg.text.max_length)
    tokens = torch.randint(5, cfg.text.vocab_size, (batch, length))
    tokens[:, 0], tokens[:, -1] = BOS, EOS
    inputs = {
        "x": torch.randn(batch, cfg.in_channels, r, r),
        "t": torch.randint(0, 1000, (batch,)),
        "tokens": tokens,
        "mask": torch.ones(batch, length, dtype=torch.bool),
    }
    if cfg.superres:
        inputs["low_res"] = torch.randn(batch, cfg.in_channels, r // 2, r // 2)
    return inputs


def forward_flops(cfg: UNetConfig, text_length: int = 64) -> int:
    """FLOPs of one forward pass for one image (a multiply-add counts as 2). Counted on the meta
    device: no real compute or memory, and attention is counted as the two matmuls it is (the CPU's
    fused attention kernel is invisible to the FLOP counter)."""
    with torch.device("meta"):
        meta = UNet(cfg)
        inputs = example_inputs(cfg, 1, text_length)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(**inputs)
    return counter.get_total_flops()


def model_info(model: UNet, text_length: int = 64) -> dict:
    return {
        "parameters": count_parameters(model),
        "text_encoder_parameters": count_parameters(model.text_encoder),
        "forward_gflops_per_image": forward_flops(model.cfg, text_length) / 1e9,
        "resolution": model.cfg.resolution,
        "text_attention": model.cfg.text_attention,
        "text_length": min(text_length, model.cfg.text.max_length),
    }
