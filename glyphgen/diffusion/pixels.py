"""Between stored images and the range the diffusion works in: uint8 [0, 255] <-> float [-1, 1].
Training feeds images through `to_unit`; samplers' outputs come back through `to_uint8`."""

from __future__ import annotations

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images (clipped) -> uint8 [0, 255], on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
