"""Export: stage checkpoint -> bundle -> load, bit-identical samples, dtypes, atomic writes, errors."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from bundle_fixtures import trained_checkpoints
from conftest import one_line_error
from safetensors.torch import load_file, save_file

from glyphgen.checkpoint_io import network_state, read_checkpoint
from glyphgen.cli import main
from glyphgen.diffusion import SamplingOptions, create_diffusion, sample
from glyphgen.inference import export_bundle, load_bundle
from glyphgen.models.unet import UNet
from glyphgen.text.tokenizer import CharTokenizer, TokenizerConfig
from glyphgen.training.core import build_model_config, stage_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return trained_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle_dir(ckpts, tmp_path_factory):
    return export_bundle(ckpts["base"], tmp_path_factory.mktemp("export") / "base")


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def ema_network(path) -> tuple[UNet, object, CharTokenizer]:
    """The checkpoint's EMA network rebuilt the way training builds it (not through the bundle)."""
    ckpt = read_checkpoint(path)
    cfg = stage_config(ckpt["hyper_parameters"]["config"])
    net = UNet(build_model_config(cfg))
    net.load_state_dict(network_state(ckpt))
    tokenizer = CharTokenizer(TokenizerConfig(max_length=net.cfg.text.max_length))
    return net.eval(), cfg.diffusion, tokenizer


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_bundle_samples_are_bit_identical_to_the_checkpoint_ema(ckpts, bundle_dir, sampler):
    net, diffusion_cfg, tokenizer = ema_network(ckpts["base"])
    texts = ["hi", "hi", "Ab\ncd"]
    tokens, mask = tokenizer.batch(texts)
    with torch.no_grad():
        expected = sample(
            net,
            create_diffusion(diffusion_cfg),
            (3, 3, 32, 32),
            sampler=sampler,
            steps="4",
            guidance=3.0,
            model_kwargs={"tokens": tokens, "mask": mask},
            generator=torch.Generator().manual_seed(7),
        )
    bundle = load_bundle(bundle_dir, device="cpu")
    assert bundle.dtype == torch.float32 and not bundle.model.training
    with torch.no_grad():
        options = SamplingOptions(seed=7, steps="4", sampler=sampler, guidance=3.0, batch_size=3)
        got = bundle.generate(["hi", "hi", "Ab\ncd"], 1, options)
    assert torch.equal(got, expected)
    # The public API returns the same images as uint8, and the same seed gives the same images.
    a = bundle.sample(["hi", "Ab\ncd"], n=1, seed=7, steps="4", sampler=sampler, guidance=3.0)
    b = bundle.sample(["hi", "Ab\ncd"], n=1, seed=7, steps="4", sampler=sampler, guidance=3.0)
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 32, 32) and torch.equal(a, b)


def test_bundle_holds_ema_weights_and_a_trainer_free_config(ckpts, bundle_dir):
    weights = load_file(bundle_dir / "model.safetensors")
    ema = network_state(read_checkpoint(ckpts["base"]))
    assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in ema)
    config = yaml.safe_load((bundle_dir / "config.yaml").read_text())
    assert set(config) == {"format", "stage", "dtype", "step", "model", "diffusion", "tokenizer"}
    assert config["format"] == "glyphgen-bundle/1" and config["stage"] == "pretrain-synthetic"
    assert config["model"]["resolution"] == 32 and config["model"]["text"]["width"] == 64
    assert config["tokenizer"]["max_length"] == 96 and config["step"] == 2
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["base"]  # no temporary left


def test_raw_weights_export_on_request(ckpts, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["export", str(ckpts["base"]), "--out", str(out), "--weights", "raw"]) == 0
    weights = load_file(out / "model.safetensors")
    ckpt = read_checkpoint(ckpts["base"])
    raw, ema = network_state(ckpt, "raw"), network_state(ckpt)
    assert weights.keys() == raw.keys() and all(torch.equal(weights[k], raw[k]) for k in raw)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the two networks differ after training


def test_other_weights_for_the_network_export_in_its_place(ckpts, tmp_path):
    ckpt = read_checkpoint(ckpts["base"])
    averaged = {k: (v + 1 if v.is_floating_point() else v) for k, v in network_state(ckpt, "raw").items()}
    weights = load_file(export_bundle(ckpts["base"], tmp_path / "avg", state=averaged) / "model.safetensors")
    assert weights.keys() == averaged.keys() and all(torch.equal(weights[k], averaged[k]) for k in averaged)
    missing = dict(list(averaged.items())[1:])
    with pytest.raises(ValueError, match=re.escape(next(iter(averaged)))):
        export_bundle(ckpts["base"], tmp_path / "bad", state=missing)
    assert not (tmp_path / "bad").exists()


def test_fp16_export_halves_the_file_and_loads(ckpts, bundle_dir, tmp_path):
    half = export_bundle(ckpts["base"], tmp_path / "half", dtype="fp16")
    size32 = (bundle_dir / "model.safetensors").stat().st_size
    size16 = (half / "model.safetensors").stat().st_size
    assert 0.45 < size16 / size32 < 0.55
    full = load_bundle(bundle_dir, device="cpu").model.state_dict()
    loaded = load_bundle(half, device="cpu")  # on the CPU: upcast to float32
    assert loaded.dtype == torch.float32
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, full[key].half().float()), key
    images = loaded.sample("hi", steps="2")
    assert images.shape == (1, 3, 32, 32)
    # Held in bf16, the network runs under autocast and the samples stay finite.
    bf16 = load_bundle(half, device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    with torch.no_grad():
        x = bf16.generate(["hi"], options=SamplingOptions(steps="2"))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_a_bundle_loads_and_samples_without_lightning(bundle_dir):
    script = f"""
        import sys
        import glyphgen
        bundle = glyphgen.load_bundle({str(bundle_dir)!r}, device="cpu")
        images = bundle.sample("hi", steps="2", as_pil=True)
        assert images[0].size == (32, 32)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"))
        assert not heavy, heavy
        print("ok")
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    # ... and `import glyphgen` alone does not even import torch.
    light = "import sys, glyphgen; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", light], timeout=60).returncode == 0


def test_export_cli_refuses_an_existing_bundle_unless_overwrite(ckpts, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert cli(["export", ckpts["base"], "--out", out], capsys)[0] == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    code, _, err = cli(["export", ckpts["base"], "--out", out], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    code, stdout, _ = cli(
        ["export", ckpts["superres"], "--out", out, "--overwrite", "--dtype", "bf16"], capsys
    )
    assert code == 0 and stdout.strip() == str(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["stage"] == "superres"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_export_errors_name_the_problem(ckpts, tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "foreign.ckpt")
    code, _, err = cli(["export", tmp_path / "foreign.ckpt", "--out", tmp_path / "b1"], capsys)
    one_line_error(code, err, "not a glyphgen training checkpoint")
    (tmp_path / "cut.ckpt").write_bytes(ckpts["base"].read_bytes()[:4000])
    code, _, err = cli(["export", tmp_path / "cut.ckpt", "--out", tmp_path / "b2"], capsys)
    one_line_error(code, err, "cut.ckpt", "not a readable checkpoint")
    code, _, err = cli(["export", tmp_path / "none.ckpt", "--out", tmp_path / "b3"], capsys)
    one_line_error(code, err, "checkpoint not found")
    assert not any(p.name.startswith(("b1", "b2", "b3", ".b")) for p in tmp_path.iterdir())


def broken_copy(bundle_dir, tmp_path, name: str):
    out = tmp_path / name
    out.mkdir()
    for f in bundle_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_a_bundle_whose_config_does_not_match_its_tensors_is_refused(bundle_dir, tmp_path, capsys):
    wider = broken_copy(bundle_dir, tmp_path, "wider")
    config = (wider / "config.yaml").read_text()
    (wider / "config.yaml").write_text(config.replace("model_channels: 32", "model_channels: 48"))
    code, _, err = cli(["sample", "hi", "--base", wider, "--out", tmp_path / "x.png"], capsys)
    one_line_error(code, err, "weights do not match config.yaml", "of another shape", "input_blocks.0.0.")

    fewer = broken_copy(bundle_dir, tmp_path, "fewer")
    weights = load_file(fewer / "model.safetensors")
    del weights["out.2.weight"]
    weights["extra.bias"] = torch.zeros(2)
    save_file(weights, fewer / "model.safetensors")
    code, _, err = cli(["sample", "hi", "--base", fewer, "--out", tmp_path / "x.png"], capsys)
    one_line_error(code, err, "1 missing tensors: out.2.weight", "1 unexpected tensors: extra.bias")

    cut = broken_copy(bundle_dir, tmp_path, "cut")
    (cut / "model.safetensors").write_bytes((bundle_dir / "model.safetensors").read_bytes()[:1000])
    code, _, err = cli(["sample", "hi", "--base", cut, "--out", tmp_path / "x.png"], capsys)
    one_line_error(code, err, "not a readable safetensors file")

    foreign = broken_copy(bundle_dir, tmp_path, "foreign")
    (foreign / "config.yaml").write_text(config.replace("glyphgen-bundle/1", "something-else"))
    code, _, err = cli(["sample", "hi", "--base", foreign, "--out", tmp_path / "x.png"], capsys)
    one_line_error(code, err, "format", "something-else")
    assert not (tmp_path / "x.png").exists()
