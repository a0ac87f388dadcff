"""The character localisation loss: recorded weave attention, box masks, the loss, and the boxes the
loader hands to it from real synthetic shards."""

from __future__ import annotations

import math

import pytest
import torch

from glyphgen.data.build import build
from glyphgen.data.loader import LoaderConfig, make_loader
from glyphgen.models.attention import WeaveAttention
from glyphgen.models.localisation import box_masks, localisation_loss, recording_attention
from glyphgen.models.registry import model_config
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import CharTokenizer


def tiny_inputs(batch: int = 2):
    torch.manual_seed(0)
    model = UNet(model_config("tiny")).eval()
    tokens, mask = CharTokenizer().batch(["ab", "hello"])
    x = torch.randn(batch, 3, 32, 32)
    return model, x, torch.tensor([10, 500]), tokens, mask


def test_recording_keeps_the_output_and_gives_one_map_per_weave_layer():
    model, x, t, tokens, mask = tiny_inputs()
    with torch.no_grad():
        plain = model(x, t, tokens, mask)
        with recording_attention(model) as maps:
            recorded = model(x, t, tokens, mask)
    torch.testing.assert_close(recorded, plain, rtol=1e-4, atol=1e-5)
    weave = [m for m in model.modules() if isinstance(m, WeaveAttention)]
    assert weave and len(maps) == len(weave)
    for m in maps:
        side = round(m.shape[-1] ** 0.5)
        assert m.shape[:2] == tokens.shape and side * side == m.shape[-1]
        torch.testing.assert_close(m.sum(-1), torch.ones(tokens.shape))
    recorded = len(maps)
    with torch.no_grad():
        model(x, t, tokens, mask)
    assert len(maps) == recorded  # nothing recorded once the block is left
    assert all(layer.record is None for layer in weave)


def test_box_masks_mark_the_cells_a_box_touches():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.6, 0.6, 0.65, 0.65]]])
    masks = box_masks(boxes, 4).reshape(1, 2, 4, 4)
    assert masks[0, 0].tolist() == [[1, 1, 0, 0]] * 4  # the left half
    assert masks[0, 1].sum() == 1 and masks[0, 1, 2, 2] == 1  # a tiny box still marks its cell


def test_the_loss_rewards_attention_inside_the_box():
    boxes = torch.zeros(3, 3, 4)
    boxes[:, 1] = torch.tensor([0.0, 0.0, 0.5, 0.5])  # token 1: the top-left quarter
    inside = torch.zeros(4, 4)
    inside[:2, :2] = 1 / 4
    uniform = torch.full((16,), 1 / 16)
    maps = torch.stack([uniform.expand(3, 16), inside.flatten().expand(3, 16), uniform.expand(3, 16)])
    loss = localisation_loss([maps], boxes)
    assert loss[1] == pytest.approx(0, abs=1e-4)
    assert loss[0] == pytest.approx(-math.log(0.25), rel=1e-4) == loss[2]
    assert localisation_loss([maps], torch.zeros(3, 3, 4)).tolist() == [0, 0, 0]  # no box, no loss


def test_the_loss_moves_attention_onto_the_boxes():
    model, x, t, tokens, mask = tiny_inputs()
    boxes = torch.zeros(*tokens.shape, 4)
    boxes[:, 1] = torch.tensor([0.0, 0.0, 0.25, 0.25])
    boxes[:, 2] = torch.tensor([0.75, 0.75, 1.0, 1.0])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        with recording_attention(model) as maps:
            model(x, t, tokens, mask)
        loss = localisation_loss(maps, boxes).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_loader_aligns_character_boxes_with_tokens(tmp_path):
    build("synthetic", values={"out": str(tmp_path / "s"), "resolution": 32, "count": 8, "workers": 1})
    cfg = LoaderConfig(shards=str(tmp_path / "s"), resolution=64, batch_size=8, num_workers=0)
    cfg.shuffle_buffer, cfg.char_boxes = 0, True
    batch = next(iter(make_loader(cfg)))
    boxes = batch["boxes"]
    assert boxes.shape == (*batch["tokens"].shape, 4)
    for text, row in zip(batch["text"], boxes, strict=True):
        has_box = (row[:, 2] > row[:, 0]).tolist()
        assert has_box == [False] + [not ch.isspace() for ch in text] + [False] * (len(row) - len(text) - 1)
        assert ((row >= 0) & (row <= 1)).all()
    plain = next(
        iter(
            make_loader(LoaderConfig(shards=str(tmp_path / "s"), resolution=32, batch_size=8, num_workers=0))
        )
    )
    assert "boxes" not in plain


def test_localisation_needs_weave_attention_and_says_so_at_load():
    from glyphgen.config import ConfigError, load_config
    from glyphgen.training.config import StageConfig

    with pytest.raises(ConfigError, match=r"^localisation: needs model.text_attention weave .*got 'glide'"):
        load_config(StageConfig, overrides=["localisation=0.1", "model.text_attention=glide"])
    assert load_config(StageConfig, overrides=["model.text_attention=glide"]).localisation == 0
