"""Attention layers of the U-Net: image self-attention (optionally GLIDE-style, with the text
appended to its keys and values) and frank's **weave attention** between image and text.

Weave attention costs O(L * HW) memory per head (text length times pixels) where GLIDE's joint
attention costs O((L + HW)^2); frank chose weave for that reason, and glyphgen keeps both behind
one interface for the head-to-head frank's author never ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from glyphgen.models.blocks import AdaGN, group_norm, zero_module


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


def key_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] key-padding mask (True = attend) -> the [B, 1, 1, L] boolean mask SDPA broadcasts
    over heads and queries, so each sample is masked by its own padding."""
    return mask[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels. With `text_dim`, the projected text tokens are
    prepended to the keys and values (GLIDE), masked per sample by the text's padding mask."""

    def __init__(self, channels: int, head_channels: int, text_dim: int | None = None):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.text_kv = nn.Linear(text_dim, 2 * channels) if text_dim else None
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(
        self, x: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        mask = None
        if self.text_kv is not None:
            tk, tv = (split_heads(t, self.heads) for t in self.text_kv(text).chunk(2, dim=-1))
            k, v = torch.cat([tk, k], dim=2), torch.cat([tv, v], dim=2)
            pixels = torch.ones(b, h * w, dtype=torch.bool, device=x.device)
            mask = key_mask(torch.cat([text_mask, pixels], dim=1))
        out = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class AxialPositionEmbedding(nn.Module):
    """An absolute position embedding for a res x res grid: a row table plus a column table."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.rows = nn.Parameter(torch.randn(channels, resolution, 1) * 0.02)
        self.cols = nn.Parameter(torch.randn(channels, 1, resolution) * 0.02)

    def forward(self) -> torch.Tensor:
        return (self.rows + self.cols)[None]


class WeaveAttention(nn.Module):
    """frank's weave layer, after a ResBlock in a low-resolution output block:
    1. image-to-text attention: the (LayerNormed) text tokens query the image features;
    2. a feed-forward layer on the text;
    3. text-to-image attention: the image features query the updated text.
    Image features entering both attentions go through AdaGN conditioned on the timestep embedding,
    plus an axial position embedding, so queries know both the noise level and where they are."""

    def __init__(self, channels: int, text_dim: int, head_channels: int, emb_dim: int, resolution: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.resolution = resolution
        self.image_norm = AdaGN(channels, emb_dim)
        self.position = AxialPositionEmbedding(channels, resolution)
        # 1. image -> text
        self.i2t_norm = nn.LayerNorm(text_dim)
        self.i2t_q = nn.Linear(text_dim, channels)
        self.i2t_kv = nn.Linear(channels, 2 * channels)
        self.i2t_out = nn.Linear(channels, text_dim)
        # 2. feed-forward on the text
        self.ff_norm = nn.LayerNorm(text_dim)
        self.ff = nn.Sequential(
            nn.Linear(text_dim, 4 * text_dim), nn.GELU(), nn.Linear(4 * text_dim, text_dim)
        )
        # 3. text -> image
        self.t2i_norm = nn.LayerNorm(text_dim)
        self.t2i_q = nn.Linear(channels, channels)
        self.t2i_kv = nn.Linear(text_dim, 2 * channels)
        self.t2i_out = zero_module(nn.Linear(channels, channels))
        self.record: list[torch.Tensor] | None = None
        """When a list, each forward appends its image-to-text attention weights [B, L, H*W] (mean
        over heads); see `glyphgen.models.localisation`."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor):
        b, c, h, w = x.shape
        if h != self.resolution or w != self.resolution:
            raise ValueError(f"weave layer built for {self.resolution}px features got {h}x{w}")
        image = (self.image_norm(x, emb) + self.position()).flatten(2).transpose(1, 2)

        q = split_heads(self.i2t_q(self.i2t_norm(text)), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.i2t_kv(image).chunk(2, dim=-1))
        if self.record is None:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:  # the same attention, with its weights kept: where each text token looks in the image
            weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
            self.record.append(weights.mean(dim=1))
            attended = weights @ v
        text = text + self.i2t_out(merge_heads(attended))

        text = text + self.ff(self.ff_norm(text))

        q = split_heads(self.t2i_q(image), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.t2i_kv(self.t2i_norm(text)).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask(text_mask))
        return x + self.t2i_out(merge_heads(out)).transpose(1, 2).reshape(b, c, h, w)
