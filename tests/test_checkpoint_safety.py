"""Checkpoints and bundles are data, never code, whatever the environment says: torch told to unpickle
anything (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) still reads them weights-only, and a stored config's
`${oc.env:...}` is refused without resolving it. The CLI-level rows are in bad_input_bundles.py."""

from __future__ import annotations

import pytest
import torch
from bad_input_bundles import Payload, _pickle_payload, _resume, _run_untouched, bundle_copy, stage_checkpoint
from conftest import one_line_error

from glyphgen.checkpoint_io import read_checkpoint
from glyphgen.cli import main
from glyphgen.config import load_config
from glyphgen.inference import load_bundle
from glyphgen.training.checkpoints import AtomicCheckpointIO
from glyphgen.training.config import StageConfig

SECRET = "hunter2-do-not-print"


@pytest.fixture
def unsafe_torch(monkeypatch):
    """torch told to load every checkpoint whose caller did not insist on weights_only."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_a_crafted_last_ckpt_never_runs_through_a_resume(unsafe_torch, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(_resume(_pickle_payload)(tmp_path))
    one_line_error(code, capsys.readouterr().err, "last.ckpt", "refused by the weights-only reader")
    _run_untouched(tmp_path)


def test_the_trainer_checkpoint_io_reads_weights_only(unsafe_torch, tmp_path):
    """Lightning resumes through the plugin: even asked for weights_only=False, it runs no pickle."""
    io = AtomicCheckpointIO()
    io.save_checkpoint(stage_checkpoint(), tmp_path / "good.ckpt")
    loaded = io.load_checkpoint(tmp_path / "good.ckpt", weights_only=False)
    assert loaded["glyphgen"]["kind"] == "stage" and "ema.out.2.weight" in loaded["state_dict"]

    torch.save(stage_checkpoint(payload=Payload(tmp_path / "PWNED")), tmp_path / "evil.ckpt")
    with pytest.raises(
        ValueError, match=r"evil.ckpt: not a readable checkpoint \(refused by the weights-only"
    ):
        io.load_checkpoint(tmp_path / "evil.ckpt", weights_only=False)
    with pytest.raises(ValueError, match="refused by the weights-only reader"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "PWNED").exists()


def test_export_runs_no_pickle(unsafe_torch, tmp_path, capsys):
    torch.save(stage_checkpoint(payload=Payload(tmp_path / "PWNED")), tmp_path / "evil.ckpt")
    code = main(["export", str(tmp_path / "evil.ckpt"), "--out", str(tmp_path / "b")])
    one_line_error(code, capsys.readouterr().err, "evil.ckpt", "refused by the weights-only reader")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]


def test_a_bundle_config_never_shows_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLYPHGEN_TEST_SECRET", SECRET)
    folder = bundle_copy(tmp_path)
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace("glyphgen-bundle/1", "${oc.env:GLYPHGEN_TEST_SECRET}"))
    with pytest.raises(ValueError, match="config.yaml: format: holds an interpolation") as caught:
        load_bundle(folder, device="cpu")
    assert SECRET not in str(caught.value)
    code = main(["sample", "hi", "--base", str(folder), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    one_line_error(code, err, "format: holds an interpolation")
    assert SECRET not in err and not (tmp_path / "x.png").exists()


def test_a_checkpoint_config_never_shows_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLYPHGEN_TEST_SECRET", SECRET)
    ckpt = stage_checkpoint()
    ckpt["hyper_parameters"]["config"]["diffusion"]["sampler"] = "${oc.env:GLYPHGEN_TEST_SECRET}"
    torch.save(ckpt, tmp_path / "stage.ckpt")
    code = main(["export", str(tmp_path / "stage.ckpt"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    one_line_error(code, err, "stage.ckpt: hyper_parameters.config.diffusion.sampler: holds an interpolation")
    assert SECRET not in err and not (tmp_path / "b").exists()


def test_stage_configs_written_by_the_user_keep_their_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPHGEN_TEST_SIZE", "tiny")
    (tmp_path / "stage.yaml").write_text("model_size: ${oc.env:GLYPHGEN_TEST_SIZE}\ndata:\n  shards: s\n")
    assert load_config(StageConfig, [tmp_path / "stage.yaml"]).model_size == "tiny"


def test_export_overwrite_replaces_its_own_bundle(tmp_path, capsys):
    """The refusal to replace anything else still lets a bundle be exported over again."""
    torch.save(stage_checkpoint(), tmp_path / "stage.ckpt")
    args = ["export", str(tmp_path / "stage.ckpt"), "--out", str(tmp_path / "b")]
    assert main(args) == 0
    first = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert main([*args, "--overwrite", "--dtype", "fp16"]) == 0
    capsys.readouterr()
    assert len((tmp_path / "b" / "model.safetensors").read_bytes()) < len(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "stage.ckpt"]
    assert load_bundle(tmp_path / "b", device="cpu").config.dtype == "fp16"


def test_the_crafted_checkpoint_exports_the_tiny_bundle(tmp_path):
    """The corpus's checkpoints are faithful: exported, they give back the bundle they came from."""
    from bad_input_bundles import TINY_BUNDLE
    from safetensors.torch import load_file

    from glyphgen.inference.format import read_config

    torch.save(stage_checkpoint(), tmp_path / "stage.ckpt")
    main(["export", str(tmp_path / "stage.ckpt"), "--out", str(tmp_path / "b")])
    ours, theirs = (
        load_file(tmp_path / "b" / "model.safetensors"),
        load_file(TINY_BUNDLE / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert read_config(tmp_path / "b") == read_config(TINY_BUNDLE)


@pytest.mark.parametrize("position", [5, [1], ["a", 2], [-1, 0], "00"])
def test_a_crafted_data_position_gets_one_line(position):
    from glyphgen.training.core import DiffusionCore

    core = DiffusionCore({"stage": "pretrain-synthetic", "model_size": "tiny"})
    with pytest.raises(ValueError, match=r"glyphgen.data_position: expected \[epoch, index\], got "):
        core.on_load_checkpoint({"state_dict": {}, "glyphgen": {"data_position": position}})
    core.on_load_checkpoint({"state_dict": {}, "glyphgen": {"data_position": [2, 7]}})
    assert core.data_position == (2, 7)
