"""The text-conditioned U-Net and its super-resolution variant (docs/architecture.md, "The model").

Layout follows OpenAI's improved-diffusion so that block indices mean the same thing in the base
and the super-resolution model (the sandwich warm start maps them): `input_blocks[0]` is the input
conv; each level then has `num_res_blocks` blocks plus a downsampling block (but the last level);
`middle_block`; `output_blocks` run from the lowest resolution up, `num_res_blocks + 1` per level,
the last block of a level ending in an upsampling ResBlock (but the top level); `out` is the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from glyphgen.config import Choice, require
from glyphgen.data.fonts import package_font_names
from glyphgen.models.attention import SelfAttention, WeaveAttention
from glyphgen.models.blocks import ChannelMeanPath, ResBlock, group_norm, timestep_embedding, zero_module
from glyphgen.models.glyphs import LINE_HEIGHT, REFERENCE_FONT, GlyphCanvas
from glyphgen.models.text_encoder import TextEncoder, TextEncoderConfig
from glyphgen.text.alphabet import DEFAULT_ALPHABET, SPECIALS, UNK


class TextAttention(Choice):
    """How the image sees the text (`UNetConfig.text_attention`)."""

    weave = "weave"
    glide = "glide"
    none = "none"


@dataclass
class UNetConfig:
    resolution: int = 128
    """Side of the (square) images the model denoises."""
    in_channels: int = 3
    """Image channels (RGB; grayscale data is repeated to RGB)."""
    model_channels: int = 192
    """Channels of the first level; level i has model_channels * channel_mult[i]."""
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4])
    """Channel multiplier per level; one level per entry, each halving the resolution."""
    num_res_blocks: int = 2
    """ResBlocks per level on the way down (one more on the way up)."""
    attention_resolutions: list[int] = field(default_factory=lambda: [32, 16, 8])
    """Feature resolutions that get image self-attention."""
    text_resolutions: list[int] = field(default_factory=lambda: [32, 16, 8])
    """Output-block resolutions that get a weave text-attention layer after each ResBlock."""
    head_channels: int = 64
    """Channels per attention head."""
    dropout: float = 0.0
    """Dropout inside ResBlocks."""
    learn_sigma: bool = True
    """Also output the variance interpolation (2x channels), for the hybrid loss."""
    text_attention: TextAttention = TextAttention.weave
    """How the image sees the text: "weave" (frank's), "glide" (text appended to self-attention
    keys/values) or "none" (no text: an unconditional model)."""
    mean_path: bool = False
    """Give the noisy image's per-channel means a direct, timestep-dependent linear route to the
    prediction (`ChannelMeanPath`): GroupNorm hides them from the rest of the network, which is why
    samples of grey data keep the start noise's tint."""
    glyph_canvas: bool = False
    """Also feed the transcript drawn in a plain reference font (`GlyphCanvas`: set as centred text)
    as an extra input channel, so the network sees the letters' shapes instead of having to learn
    them from token ids alone (with the stage's `align_glyphs`, moved onto the text in training)."""
    glyph_font: str = REFERENCE_FONT
    """File name of the glyph canvas's font, one that a `font-*` package installed with glyphgen
    ships (`glyphgen fonts` lists them). Its letters are the ones the network is shown, and its
    samples take their shapes after them."""
    glyph_line_height: float = LINE_HEIGHT
    """The largest height of one line of the glyph canvas, as a share of the side, where the canvas
    is set as plain text: in sampling, and in training on images without character boxes (with
    `align_glyphs`, an image's canvas is moved onto its boxes whatever this is). Short texts are
    drawn this big, longer ones as big as fits; samples write as big as their canvas."""
    superres: bool = False
    """Super-resolution model: the low-res image is upsampled and concatenated to the input."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The character-level text encoder."""

    def __post_init__(self):
        levels = len(self.channel_mult)
        require(levels >= 1, "channel_mult", "needs at least one level")
        require(
            self.resolution % 2 ** (levels - 1) == 0,
            "resolution",
            f"{self.resolution} cannot be halved {levels - 1} times",
        )
        self.text_attention = TextAttention.parse(self.text_attention, "text_attention")
        require(
            not self.glyph_canvas or self.text_attention != "none",
            "glyph_canvas",
            "draws the transcript: the model must be text-conditioned (text_attention weave or glide)",
        )
        require(
            not self.glyph_canvas or self.text.vocab_size == len(SPECIALS) + len(DEFAULT_ALPHABET),
            "glyph_canvas",
            "draws the default alphabet's tokens only: text.vocab_size must be the default",
        )
        if self.glyph_canvas:
            require(
                self.glyph_font in package_font_names(),
                "glyph_font",
                f"no installed font-* package ships {self.glyph_font!r} (a file name such as "
                f"{REFERENCE_FONT!r}; `glyphgen fonts` lists the fonts and their files)",
            )
        require(
            0 < self.glyph_line_height <= 1,
            "glyph_line_height",
            f"is a share of the image side, in (0, 1]; got {self.glyph_line_height}",
        )
        feature_sizes = {self.resolution >> i for i in range(levels)}
        for key in ("attention_resolutions", "text_resolutions"):
            bad = sorted(set(getattr(self, key)) - feature_sizes)
            require(not bad, key, f"{bad} are not feature resolutions of this U-Net {sorted(feature_sizes)}")
        require(
            self.text_attention != "glide" or bool(self.attention_resolutions),
            "attention_resolutions",
            "glide text attention lives in self-attention layers: name at least one resolution",
        )

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)


ZERO_STARTED = ("mean_path.",)
"""Prefixes of the tensors a checkpoint made without them may lack: they start at zero, where the
network is the same function as one without them, so a warm start leaves them so."""


DRAWN = ("glyph_canvas.",)
"""Prefixes of the tensors drawn from a font, not learned: a sandwich warm start neither copies
nor expects them, so a super-resolution model may go with or without the base's glyph canvas."""


class ConditionedSequence(nn.ModuleList):
    """A sequence of layers, each called with the conditioning it needs."""

    def forward(self, x, emb, text, text_mask):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, WeaveAttention):
                x = layer(x, emb, text, text_mask)
            elif isinstance(layer, SelfAttention):
                x = layer(x, text, text_mask)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """model(x_t [B, C, H, W], t [B], tokens [B, L], mask [B, L], low_res=None, text_box=None)
    -> [B, out_channels, H, W]. `text_box` (training only) aligns the glyph canvas with the text."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        text_dim = cfg.text.width if cfg.text_attention != "none" else None
        glide_dim = text_dim if cfg.text_attention == "glide" else None
        weave = cfg.text_attention == "weave"

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_encoder = TextEncoder(cfg.text, emb_dim) if text_dim else None

        def attention(ch: int, res: int) -> list[nn.Module]:
            return (
                [SelfAttention(ch, cfg.head_channels, glide_dim)] if res in cfg.attention_resolutions else []
            )

        in_ch = cfg.in_channels * (2 if cfg.superres else 1) + int(cfg.glyph_canvas)
        self.glyph_canvas = (
            GlyphCanvas(
                cfg.resolution,
                DEFAULT_ALPHABET,
                len(SPECIALS),
                cfg.text.newline_id,
                UNK,
                cfg.glyph_font,
                cfg.glyph_line_height,
            )
            if cfg.glyph_canvas
            else None
        )
        ch, res = mc * cfg.channel_mult[0], cfg.resolution
        self.input_blocks = nn.ModuleList([ConditionedSequence([nn.Conv2d(in_ch, ch, 3, padding=1)])])
        skips = [ch]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(
                    ConditionedSequence(
                        [ResBlock(ch, emb_dim, mc * mult, cfg.dropout), *attention(mc * mult, res)]
                    )
                )
                ch = mc * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.input_blocks.append(
                    ConditionedSequence([ResBlock(ch, emb_dim, ch, cfg.dropout, resample="down")])
                )
                skips.append(ch)
                res //= 2

        self.middle_block = ConditionedSequence(
            [
                ResBlock(ch, emb_dim, ch, cfg.dropout),
                SelfAttention(ch, cfg.head_channels, glide_dim),
                ResBlock(ch, emb_dim, ch, cfg.dropout),
            ]
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), emb_dim, mc * mult, cfg.dropout)]
                ch = mc * mult
                layers += attention(ch, res)
                if weave and res in cfg.text_resolutions:
                    layers.append(WeaveAttention(ch, text_dim, cfg.head_channels, emb_dim, res))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, cfg.dropout, resample="up"))
                    res *= 2
                self.output_blocks.append(ConditionedSequence(layers))

        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )
        self.mean_path = ChannelMeanPath(cfg.in_channels, emb_dim) if cfg.mean_path else None

    def forward(self, x, t, tokens=None, mask=None, low_res=None, text_box=None):
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        text = text_mask = None
        if self.text_encoder is not None:
            if tokens is None or mask is None:
                raise ValueError("this model is text-conditioned: pass tokens and mask")
            text, text_mask = self.text_encoder(tokens, mask, emb)
        noisy = x
        if self.cfg.superres:
            if low_res is None:
                raise ValueError("a super-resolution model needs the low-res image (low_res=...)")
            low_res = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, low_res.to(x.dtype)], dim=1)
        if self.glyph_canvas is not None:
            x = torch.cat([x, self.glyph_canvas(tokens, text_box).to(x.dtype)], dim=1)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, text, text_mask)
            hs.append(h)
        h = self.middle_block(h, emb, text, text_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, text, text_mask)
        out = self.out(h)
        if self.mean_path is None:
            return out
        c = self.cfg.in_channels  # the path adds to the prediction, not to the variance channels
        return torch.cat([out[:, :c] + self.mean_path(noisy, emb), out[:, c:]], dim=1)
