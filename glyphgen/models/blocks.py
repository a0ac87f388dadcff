"""U-Net building blocks in the OpenAI improved-diffusion style: timestep embedding, ResBlocks with
scale-shift GroupNorm (AdaGN) conditioning, and BigGAN-style up/down-sampling ResBlocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with as many groups as divide the channels (tiny configs have few channels)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so every block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class AdaGN(nn.Module):
    """GroupNorm whose scale and shift come from a conditioning vector: norm(x) * (1 + scale) + shift."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * channels))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class Resample(nn.Module):
    """x2 nearest upsampling or x2 average-pool downsampling (inside the BigGAN-style ResBlocks)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.mode == "down":
            return F.avg_pool2d(x, 2)
        return x


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> (resample) -> conv, AdaGN with the timestep embedding, dropout, zero conv;
    a skip path resampled the same way and projected when the channel count changes."""

    def __init__(
        self, channels: int, emb_dim: int, out_channels: int, dropout: float = 0.0, resample: str = ""
    ):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU())
        self.resample = Resample(resample)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.ada_norm = AdaGN(out_channels, emb_dim)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(self.resample(self.in_layers(x)))
        h = self.out_layers(self.ada_norm(h, emb))
        return self.skip(self.resample(x)) + h


class ChannelMeanPath(nn.Module):
    """Adds A(t) m to the prediction, where m holds how the noisy image's per-channel means differ
    from their average (its colour, not its brightness) times the square root of its pixel count (so
    they have unit variance in pure noise, and the small weights Adam reaches soon are enough), and
    A is a C x C matrix computed from the timestep embedding (zero at the start). Fed the brightness
    too, the path's still-noisy gains turned a white page's large mean into colour noise.

    Every GroupNorm removes its group's mean, so a U-Net barely sees an image's mean colour, and its
    prediction of it stays nearly the same whatever the input. Under v-prediction the x0 it implies
    then keeps most of the input's channel means (eps amplifies them), so the start noise's
    channel-mean differences survive sampling as a tint (BENCHMARKS.md "the channel-mean path").
    This path gives those numbers a direct, linear route to the output, which Adam fits in a few
    hundred steps however small their share of the loss."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.channels = channels
        self.gain = nn.Sequential(nn.SiLU(), zero_module(nn.Linear(emb_dim, channels * channels)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gain = self.gain(emb).view(-1, self.channels, self.channels)
        means = x.float().mean((2, 3)) * math.sqrt(x.shape[2] * x.shape[3])
        means = means - means.mean(1, keepdim=True)
        return torch.einsum("bij,bj->bi", gain.float(), means)[:, :, None, None].to(x.dtype)
