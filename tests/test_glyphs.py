"""The glyph canvas: the transcript drawn in the reference font as the U-Net's extra input channel."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glyphgen.config import ConfigError, load_config, to_dict
from glyphgen.data.build import build
from glyphgen.data.loader import make_loader
from glyphgen.diffusion.sampling import null_text_like
from glyphgen.models.glyphs import GlyphCanvas, text_box
from glyphgen.models.registry import model_config, sized_model_config
from glyphgen.models.unet import UNet
from glyphgen.text.alphabet import DEFAULT_ALPHABET, SPECIALS, UNK
from glyphgen.text.tokenizer import CharTokenizer
from glyphgen.training.config import StageConfig
from glyphgen.training.stages import PretrainSynthetic

TOK = CharTokenizer()
NEWLINE = len(SPECIALS) + DEFAULT_ALPHABET.index("\n")


def canvas(texts: list[str], side: int = 32, pad_to: int | None = None) -> torch.Tensor:
    tokens, _ = TOK.batch(texts, pad_to=pad_to)
    return GlyphCanvas(side, DEFAULT_ALPHABET, len(SPECIALS), NEWLINE, UNK)(tokens)[:, 0]


def ink_extent(image: torch.Tensor) -> tuple[list[int], list[int]]:
    """Rows and columns with any ink."""
    ink = image > -0.9
    return ink.any(1).nonzero().flatten().tolist(), ink.any(0).nonzero().flatten().tolist()


def test_the_null_text_and_blank_transcripts_draw_a_blank_canvas():
    tokens, mask = TOK.batch(["THE", "   ", ""])
    null, _ = null_text_like(tokens, mask)
    layer = GlyphCanvas(32, DEFAULT_ALPHABET, len(SPECIALS), NEWLINE, UNK)
    assert (layer(null) == -1).all()  # guidance's unconditional branch sees no letters
    out = layer(tokens)
    assert (out[1:] == -1).all() and (out[0] > 0).any()
    assert out.min() >= -1 and out.max() <= 1


def test_each_letter_draws_its_own_shape_and_padding_changes_nothing():
    images = canvas(["I", "O", "IO"], pad_to=12)
    assert torch.equal(canvas(["I", "O", "IO"]), images)  # the layout counts characters, not pads
    i, o = images[0], images[1]
    assert (o > -1).sum() > 2 * (i > -1).sum()  # an O carries much more ink than an I
    assert not torch.equal(images[2], images[0])


def test_the_block_is_centred_and_fits_the_canvas():
    short, long, two = canvas(["AB", "ABCDEFGH", "AB\nCD"])
    rows_s, cols_s = ink_extent(short)
    rows_l, cols_l = ink_extent(long)
    assert cols_l[-1] - cols_l[0] >= 24 and cols_l[0] >= 1 and cols_l[-1] <= 30  # fills, within margins
    assert len(rows_l) < len(rows_s)  # a long line is drawn in smaller letters
    for cols in (cols_s, cols_l):  # centred horizontally to within a pixel or two
        assert abs((cols[0] + cols[-1]) / 2 - 15.5) <= 2
    rows_2, _ = ink_extent(two)
    assert rows_2[0] < rows_s[0] and rows_2[-1] > rows_s[-1]  # two lines reach above and below one
    assert abs((rows_2[0] + rows_2[-1]) / 2 - 15.5) <= 3
    assert (two[rows_2[0] : rows_2[0] + 3] > -1).any() and (two[rows_2[-1] - 2 : rows_2[-1] + 1] > -1).any()


def test_unknown_characters_keep_their_room():
    # "é" is not in the alphabet: UNK draws nothing but still takes room, as the encoder counts it.
    with_unknown, plain = canvas(["AéB", "AB"])
    (_, cols_unknown), (_, cols_plain) = ink_extent(with_unknown), ink_extent(plain)
    assert cols_unknown[-1] - cols_unknown[0] >= cols_plain[-1] - cols_plain[0] + 5
    assert abs((with_unknown > 0).sum() - (plain > 0).sum()) <= 0.1 * (plain > 0).sum()


def test_letters_are_set_at_their_own_widths():
    narrow, wide = canvas(["IIII", "WWWW"])
    assert len(ink_extent(wide)[1]) > 1.5 * len(ink_extent(narrow)[1])


@pytest.mark.parametrize("side", [32, 64, 128])
def test_every_resolution_draws_the_same_layout(side):
    small = canvas(["Wg"], side=32)[0]
    big = canvas(["Wg"], side=side)[0]
    pooled = torch.nn.functional.avg_pool2d(big[None, None], side // 32)[0, 0]
    assert (pooled - small).abs().mean() < 0.05


@pytest.mark.parametrize("glyphs", [True, False])
def test_the_unet_sees_the_canvas(glyphs):
    cfg = dataclasses.replace(model_config("tiny"), glyph_canvas=glyphs)
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    assert model.input_blocks[0][0].in_channels == 3 + glyphs
    # The atlas travels with the weights, so a bundle draws the glyphs it was trained with.
    assert [k for k in model.state_dict() if "glyph" in k] == (
        ["glyph_canvas.atlas", "glyph_canvas.advance"] if glyphs else []
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for p in model.text_encoder.parameters():  # the text attention now sees the same for any prompt
            p.zero_()
        x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
        ab, ox = model(x, t, *TOK.batch(["AB"])), model(x, t, *TOK.batch(["OX"]))
    assert torch.allclose(ab, ox, atol=1e-4) != glyphs  # only the canvas still tells them apart


def test_a_canvas_needs_text_and_the_default_alphabet():
    with pytest.raises(ConfigError, match="glyph_canvas"):
        sized_model_config("tiny", {"glyph_canvas": True, "text_attention": "none"})
    with pytest.raises(ConfigError, match="glyph_canvas"):
        sized_model_config("tiny", {"glyph_canvas": True, "text": {"vocab_size": 200}})


def test_the_canvas_font_is_a_choice_checked_on_load():
    tokens, _ = TOK.batch(["I"])
    sans = GlyphCanvas(32, DEFAULT_ALPHABET, len(SPECIALS), NEWLINE, UNK)(tokens)[0, 0]
    serif = GlyphCanvas(32, DEFAULT_ALPHABET, len(SPECIALS), NEWLINE, UNK, "SourceSerifPro-Bold.ttf")(tokens)
    rows, _ = ink_extent(sans)
    top, middle = rows[0], (rows[0] + rows[-1]) // 2
    width = [((image[row] > -0.5).sum().item()) for image in (sans, serif[0, 0]) for row in (top, middle)]
    assert width[0] == width[1]  # a bare bar: as wide at the top as in the middle
    assert width[2] > width[3]  # serifs: wider at the top
    model = UNet(sized_model_config("micro", {"glyph_canvas": True, "glyph_font": "SourceSerifPro-Bold.ttf"}))
    assert torch.equal(model.glyph_canvas(tokens), serif)
    with pytest.raises(ConfigError, match="glyph_font.*'Nope.ttf'"):
        sized_model_config("micro", {"glyph_canvas": True, "glyph_font": "Nope.ttf"})


def test_the_line_height_sets_how_big_short_texts_are_drawn():
    tokens, _ = TOK.batch(["IS", "ABCDEFGH"])
    model = UNet(sized_model_config("micro", {"glyph_canvas": True, "glyph_line_height": 0.75}))
    default, tall = (
        GlyphCanvas(32, DEFAULT_ALPHABET, len(SPECIALS), NEWLINE, UNK)(tokens),
        model.glyph_canvas(tokens),
    )
    (rows_d, cols_d), (rows_t, cols_t) = ink_extent(default[0, 0]), ink_extent(tall[0, 0])
    assert len(rows_t) >= 1.4 * len(rows_d) and len(cols_t) >= 1.4 * len(cols_d)  # 0.75 / 0.5 of the side
    assert abs((rows_t[0] + rows_t[-1]) - (rows_d[0] + rows_d[-1])) <= 2  # still centred
    assert torch.equal(default[1], tall[1])  # a long line is as big as fits either way
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match=f"glyph_line_height.*{bad}"):
            sized_model_config("micro", {"glyph_canvas": True, "glyph_line_height": bad})


def test_text_box_is_the_union_of_the_character_boxes():
    boxes = torch.zeros(2, 5, 4)
    boxes[0, 1] = torch.tensor([0.2, 0.4, 0.3, 0.6])
    boxes[0, 3] = torch.tensor([0.5, 0.3, 0.7, 0.5])  # token 2 (a space) has no box
    assert text_box(boxes).tolist() == [pytest.approx([0.2, 0.3, 0.7, 0.6]), [0.0] * 4]


def test_aligning_moves_the_ink_onto_the_text_box():
    tokens, _ = TOK.batch(["THE", "AB\nCD", "IT"])
    layer = GlyphCanvas(32, DEFAULT_ALPHABET, len(SPECIALS), NEWLINE, UNK)
    box = torch.tensor([[0.5, 0.0625, 0.9375, 0.25], [0.0, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    plain, moved = layer(tokens), layer(tokens, box)
    for image, (x0, y0, x1, y1) in zip(moved[:2, 0], box[:2].tolist(), strict=True):
        rows, cols = ink_extent(image)
        assert abs(cols[0] - x0 * 32) <= 1 and abs(cols[-1] + 1 - x1 * 32) <= 1
        assert abs(rows[0] - y0 * 32) <= 1 and abs(rows[-1] + 1 - y1 * 32) <= 1
    assert torch.equal(moved[2], plain[2])  # no box: the canvas stays where it is


class Drawn(Exception):
    """Stops a training step once the canvas has been asked for."""


def test_training_aligns_the_canvas_with_the_shards_character_boxes(tmp_path, monkeypatch):
    build("synthetic", values={"out": str(tmp_path / "s"), "resolution": 32, "count": 8, "workers": 1})
    overrides = [
        f"data.shards={tmp_path / 's'}",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.glyph_canvas=true",
        "align_glyphs=true",
        "diffusion.p_uncond=0",
    ]
    module = PretrainSynthetic(to_dict(load_config(StageConfig, overrides=overrides)))
    seen = []

    def record(tokens, box=None):
        seen.append(box)
        raise Drawn

    monkeypatch.setattr(module.model.glyph_canvas, "forward", record)
    batch = next(iter(make_loader(module.loader_config(), module.tokenizer)))
    with pytest.raises(Drawn):
        module.training_step(batch, 0)
    assert torch.equal(seen[0], text_box(batch["boxes"])) and (seen[0][:, 2] > seen[0][:, 0]).all()
    with pytest.raises(ConfigError, match="^align_glyphs: moves the glyph canvas"):
        load_config(StageConfig, overrides=["align_glyphs=true"])
