"""frank's character-level text encoder (docs/architecture.md, "Tokenizer and text encoder").

A pre-norm transformer over character tokens whose input is the sum of
- a token embedding,
- a learned absolute position embedding,
- the **line embedding**: the number of newlines up to and including each position (clamped), so a
  token knows which line of the transcript it is on,
- the diffusion **timestep embedding**, added to every token, so the encoder can extract different
  things from the text at different noise levels;
and whose attention carries a T5-style bucketed **relative position bias**, one table shared by all
layers (frank's spelling jumped when it added this: letters are placed relative to each other).
It returns the whole token sequence with its key-padding mask, not a pooled vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glyphgen.config import require
from glyphgen.text.alphabet import DEFAULT_ALPHABET, SPECIALS


@dataclass
class TextEncoderConfig:
    width: int = 512
    """Transformer width (token feature size handed to the U-Net's text attention)."""
    depth: int = 4
    """Number of transformer layers."""
    heads: int = 8
    """Attention heads per layer."""
    max_length: int = 384
    """Longest token sequence (BOS and EOS included); sizes the absolute position table."""
    vocab_size: int = len(SPECIALS) + len(DEFAULT_ALPHABET)
    """Tokenizer vocabulary size (specials + alphabet)."""
    newline_id: int = len(SPECIALS) + DEFAULT_ALPHABET.index("\n")
    """Token id of the newline character, counted by the line embedding."""
    max_lines: int = 32
    """Line embedding table size; lines past the last share its entry."""
    rel_buckets: int = 32
    """Relative position buckets (half per direction; half of those exact, the rest log-spaced)."""
    rel_max_distance: int = 128
    """Distance at which the log-spaced relative buckets stop growing."""
    ff_mult: int = 4
    """Feed-forward hidden size as a multiple of the width."""
    dropout: float = 0.0
    """Dropout in attention outputs and feed-forward layers."""

    def __post_init__(self):
        require(self.width % self.heads == 0, "width", f"{self.width} is not divisible by heads={self.heads}")
        require(self.depth >= 1, "depth", "must be >= 1")
        require(0 <= self.newline_id < self.vocab_size, "newline_id", "must be a token id")
        require(self.rel_buckets % 2 == 0 and self.rel_buckets >= 4, "rel_buckets", "must be even and >= 4")


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional bucketing of (key - query) offsets: exact buckets for small offsets,
    log-spaced ones up to `max_distance`, half of the buckets for each direction."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """A [heads, L, L] attention bias looked up by bucketed relative offset; shared across layers."""

    def __init__(self, heads: int, num_buckets: int, max_distance: int):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, heads)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.table.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1)


def line_index(tokens: torch.Tensor, newline_id: int, max_lines: int) -> torch.Tensor:
    """Newlines up to and including each position (frank's cumsum of newlines), clamped."""
    return torch.cumsum(tokens == newline_id, dim=1).clamp(max=max_lines - 1)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.ff = nn.Sequential(
            nn.Linear(cfg.width, cfg.ff_mult * cfg.width),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ff_mult * cfg.width, cfg.width),
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.dropout(self.proj(h.transpose(1, 2).reshape(b, n, c)))
        return x + self.dropout(self.ff(self.norm2(x)))


class TextEncoder(nn.Module):
    """tokens [B, L], mask [B, L] (True = real token), time_emb [B, E] -> (features [B, L, W], mask)."""

    def __init__(self, cfg: TextEncoderConfig, time_embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_length, cfg.width) * 0.01)
        self.line_embedding = nn.Embedding(cfg.max_lines, cfg.width)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, cfg.width))
        self.relative_bias = RelativePositionBias(cfg.heads, cfg.rel_buckets, cfg.rel_max_distance)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor):
        length = tokens.shape[1]
        if length > self.cfg.max_length:
            raise ValueError(
                f"text of {length} tokens is longer than the encoder's max_length={self.cfg.max_length}"
            )
        x = (
            self.token_embedding(tokens)
            + self.position_embedding[:length]
            + self.line_embedding(line_index(tokens, self.cfg.newline_id, self.cfg.max_lines))
            + self.time_proj(time_emb)[:, None, :]
        )
        # One additive mask per sample: the shared relative bias plus -inf on that sample's padding keys.
        pad = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        bias = self.relative_bias(length).to(x.dtype)[None] + pad[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return self.norm(x) * mask[..., None], mask
