"""The networks: shapes for every size and mode, masking, line embedding, relative bias, weave
gradients, and the sandwich warm start."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glyphgen.models.attention import WeaveAttention
from glyphgen.models.info import example_inputs
from glyphgen.models.registry import MODELS, SANDWICH_BASE, create_model, model_config
from glyphgen.models.text_encoder import TextEncoder, line_index
from glyphgen.models.unet import TextAttention, UNet
from glyphgen.models.warm_start import sandwich_warm_start
from glyphgen.text.tokenizer import PAD, CharTokenizer

TOK = CharTokenizer()


def tiny(mode: str = "weave", name: str = "tiny") -> UNet:
    torch.manual_seed(0)
    return UNet(dataclasses.replace(model_config(name), text_attention=mode)).eval()


def _randomize(model: torch.nn.Module) -> None:
    """Zero-initialised output layers hide bugs (every block starts as the identity): perturb them."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", TextAttention.values())
def test_shapes_for_every_size_and_mode(name, mode):
    # The glyph canvas draws the transcript, so it comes with every text-conditioned mode.
    cfg = dataclasses.replace(model_config(name), text_attention=mode, glyph_canvas=mode != "none")
    with torch.device("meta"):  # big sizes cost nothing on the meta device
        model = UNet(cfg)
        inputs = example_inputs(cfg, batch=2, text_length=20)
        out = model(**inputs)
    assert out.shape == (2, 6, cfg.resolution, cfg.resolution)


def test_padding_does_not_change_a_sample(tmp_path):
    model = tiny()
    _randomize(model)
    ids, mask = TOK.batch(["Hello\nthere", "a much longer transcript"])
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 700])
    with torch.no_grad():
        ref = model(x, t, ids, mask)
        garbage = torch.where(mask, ids, torch.randint(5, 90, ids.shape))  # other ids at pad positions
        assert torch.allclose(model(x, t, garbage, mask), ref, atol=1e-5)
        ids_long, mask_long = TOK.batch(["Hello\nthere", "a much longer transcript"], pad_to=40)
        assert torch.allclose(model(x, t, ids_long, mask_long), ref, atol=1e-5)
        alone = model(x[:1], t[:1], *TOK.batch(["Hello\nthere"]))
        assert torch.allclose(alone, ref[:1], atol=1e-5)
        unmasked = model(x, t, ids, torch.ones_like(mask))  # the mask really is what hides the pads
        assert not torch.allclose(unmasked[0], ref[0], atol=1e-4)


def test_glide_mode_masks_padding_and_uses_text():
    model = tiny("glide")
    _randomize(model)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 5])
    with torch.no_grad():
        ref = model(x, t, *TOK.batch(["ab", "cd"]))
        padded = model(x, t, *TOK.batch(["ab", "cd"], pad_to=30))
        other = model(x, t, *TOK.batch(["xy", "cd"]))
    assert torch.allclose(ref, padded, atol=1e-5)
    assert not torch.allclose(ref[0], other[0], atol=1e-4) and torch.allclose(ref[1], other[1], atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-sr"])
def test_mean_path_routes_the_noisy_images_channel_means_to_the_prediction(name):
    cfg = dataclasses.replace(model_config(name), mean_path=True)
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    plain = UNet(dataclasses.replace(cfg, mean_path=False)).eval()
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        "mean_path.gain.1.weight",
        "mean_path.gain.1.bias",
    }
    _randomize(plain)
    model.load_state_dict(plain.state_dict(), strict=False)
    r = cfg.resolution
    tokens, mask = TOK.batch(["AB", "C"])
    inputs = {"x": torch.randn(2, 3, r, r), "t": torch.tensor([50, 600]), "tokens": tokens, "mask": mask}
    if cfg.superres:
        inputs["low_res"] = torch.randn(2, 3, r // 2, r // 2) + 5  # its means must not reach the path
    with torch.no_grad():
        assert torch.equal(model(**inputs), plain(**inputs))  # zero-initialised: today's network
        model.mean_path.gain[1].bias.copy_(torch.eye(3).flatten() * 2)  # A(t) = 2 I
        out, ref = model(**inputs), plain(**inputs)
    means = inputs["x"].mean((2, 3))
    added = 2 * r * (means - means.mean(1, keepdim=True))[:, :, None, None]  # colour, scaled by sqrt(pixels)
    torch.testing.assert_close(out[:, :3], ref[:, :3] + added, atol=1e-5, rtol=0)
    assert torch.equal(out[:, 3:], ref[:, 3:])  # the variance channels are left alone


def test_line_embedding_counts_newlines():
    ids = torch.tensor([TOK.encode("ab\ncd\n\ne")])
    assert line_index(ids, model_config("tiny").text.newline_id, 8)[0].tolist() == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        3,
        3,
        3,
    ]
    assert line_index(ids, model_config("tiny").text.newline_id, 3)[0].max() == 2  # clamped
    cfg = model_config("tiny").text
    enc = TextEncoder(cfg, time_embed_dim=16).eval()
    emb = torch.zeros(1, 16)
    a = enc(*TOK.batch(["ab\ncd"]), emb)[0]
    b = enc(*TOK.batch(["ab\tcd".replace("\t", " ")]), emb)[0]
    with torch.no_grad():
        enc.line_embedding.weight.zero_()
        enc.token_embedding.weight[TOK.encode("\n")[1]] = enc.token_embedding.weight[TOK.encode(" ")[1]]
    a0, b0 = enc(*TOK.batch(["ab\ncd"]), emb)[0], enc(*TOK.batch(["ab cd"]), emb)[0]
    assert torch.allclose(a0, b0) and not torch.allclose(a, b)


def test_relative_bias_is_translation_invariant_and_shared():
    enc = TextEncoder(model_config("tiny").text, time_embed_dim=16)
    torch.nn.init.normal_(enc.relative_bias.table.weight)
    bias = enc.relative_bias(40)
    for k in (1, 5, 17):
        assert torch.equal(bias[:, :-k, :-k], bias[:, k:, k:])
    assert sum(isinstance(m, type(enc.relative_bias)) for m in enc.modules()) == 1


def test_timestep_reaches_the_text_encoder():
    enc = TextEncoder(model_config("tiny").text, time_embed_dim=16).eval()
    ids, mask = TOK.batch(["abc"])
    assert not torch.allclose(enc(ids, mask, torch.zeros(1, 16))[0], enc(ids, mask, torch.ones(1, 16))[0])


def test_weave_layers_receive_gradient():
    model = tiny().train()
    weave = [m for m in model.modules() if isinstance(m, WeaveAttention)]
    assert len(weave) == 4  # two output blocks at 16 px and two at 8 px
    _randomize(model)
    ids, mask = TOK.batch(["grad", "ients\nflow"])
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([3, 900]), ids, mask)
    out.square().mean().backward()
    for layer in weave:
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.text_encoder.token_embedding.weight.grad.abs().sum() > 0


def test_none_mode_ignores_text_and_superres_needs_low_res():
    model = tiny("none")
    assert model.text_encoder is None
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([1])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, *TOK.batch(["ignored"])))
    with pytest.raises(ValueError, match="pass tokens and mask"):
        tiny()(x, t)
    with pytest.raises(ValueError, match="low_res"):
        tiny(name="tiny-sr")(torch.randn(1, 3, 64, 64), t, *TOK.batch(["a"]))


@pytest.mark.parametrize("sr_name", ["tiny-sr", "micro-sr", "sr256"])
def test_sandwich_warm_start_report_is_exact(sr_name):
    base_name = SANDWICH_BASE[sr_name]
    device = "meta" if sr_name == "sr256" else "cpu"
    with torch.device(device):
        base, sr = create_model(base_name), create_model(sr_name)
    if device == "cpu":
        _randomize(base)
    base_state = {f"_orig_mod.{k}": v for k, v in base.state_dict().items()}  # as saved by torch.compile
    report = sandwich_warm_start(sr, base_state, base)
    n = sr.cfg.num_res_blocks + 1  # blocks in the new outer level
    top = len(base.output_blocks) - 1
    new_blocks = {f"input_blocks.{i}" for i in range(n + 1)} | {"out"}
    new_blocks |= {f"output_blocks.{i}" for i in range(top + 1, len(sr.output_blocks))}
    new_blocks.add(f"output_blocks.{top}.{len(base.output_blocks[top])}")  # the added upsampler
    expected_new = {k for k in sr.state_dict() if any(k.startswith(b + ".") for b in new_blocks)}
    assert set(report.new) == expected_new
    assert set(report.dropped) == {k for k in base.state_dict() if k.startswith(("input_blocks.0.", "out."))}
    assert len(report.loaded) + len(report.dropped) == len(base_state)
    assert report.loaded[f"input_blocks.{n + 1}.0.in_conv.weight"] == "input_blocks.1.0.in_conv.weight"
    assert (
        report.loaded["text_encoder.relative_bias.table.weight"] == "text_encoder.relative_bias.table.weight"
    )
    if device == "cpu":
        sr_state = sr.state_dict()
        for dest, src in report.loaded.items():
            assert torch.equal(sr_state[dest], base.state_dict()[src])


@pytest.mark.parametrize("sr_canvas", [True, False])
def test_sandwich_neither_copies_nor_expects_the_glyph_canvas(sr_canvas):
    # The canvas is drawn from a font: the superres model may go with or without the base's.
    base = UNet(dataclasses.replace(model_config("tiny"), glyph_canvas=True))
    sr = UNet(dataclasses.replace(model_config("tiny-sr"), glyph_canvas=sr_canvas))
    report = sandwich_warm_start(sr, base.state_dict(), base)
    drawn = {"glyph_canvas.atlas", "glyph_canvas.advance"}
    assert drawn <= set(report.dropped) and not drawn & set(report.loaded.values())
    assert (drawn <= set(report.new)) == sr_canvas
    assert sr.input_blocks[0][0].in_channels == 6 + sr_canvas


def test_sandwich_rejects_mismatched_models():
    with torch.device("meta"):
        base, sr = create_model("tiny"), create_model("sr256")
        with pytest.raises(ValueError, match="differ in model_channels"):
            sandwich_warm_start(sr, base.state_dict(), base)
        base, sr = create_model("tiny"), create_model("tiny-sr")
        state = dict(base.state_dict())
        state["middle_block.0.in_conv.weight"] = torch.zeros(1)
        with pytest.raises(ValueError, match="shape"):
            sandwich_warm_start(sr, state, base)


def test_unknown_size_and_bad_config():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model_config("huge")
    from glyphgen.config import ConfigError, ConfigValueError, load_config
    from glyphgen.models.unet import UNetConfig

    with pytest.raises(ConfigError, match="text_attention: must be one of weave, glide, none, got 'cross'"):
        load_config(UNetConfig, overrides=["text_attention=cross"])
    with pytest.raises(
        ConfigValueError, match="^text_attention: must be one of weave, glide, none, got 'x'$"
    ):
        UNetConfig(text_attention="x")
    assert UNetConfig(text_attention="glide").text_attention is TextAttention.glide
    with pytest.raises(ConfigError, match=r"text_resolutions: \[4\] are not feature resolutions"):
        load_config(UNetConfig, overrides=["text_resolutions=[4]"])


def test_padding_id_is_pad():
    ids, mask = TOK.batch(["a", "abc"])
    assert ids[0, -1] == PAD and not mask[0, -1]
