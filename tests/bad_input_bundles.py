"""Bad-input corpus rows: checkpoints and bundles (see bad_input.py).

Checkpoints and bundles are data, never code: a checkpoint is read weights-only, a stored config is
never resolved (an interpolation is refused), and weights of the wrong dtype or holding NaN are
refused at load. `export --overwrite` replaces a bundle and nothing else, and a resume that cannot
read its checkpoint leaves the run folder as it was.

No row trains: the checkpoints are built from the tiny bundle in tests/data, whose network and
diffusion become the stored stage config."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from bad_input import Case
from conftest import write_shards
from safetensors.torch import load_file, save_file

TINY_BUNDLE = Path(__file__).parent / "data" / "bundle-74f265e"
Setup = Callable[[Path], list[str]]
OLD_CONFIG = "stage: pretrain-synthetic  # the run's config before the failed resume\n"


class Payload:
    """A pickle that creates the folder `marker` when it is unpickled by anything but a weights-only
    reader."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def stage_checkpoint(**changes) -> dict:
    """A glyphgen stage checkpoint holding the tiny bundle's weights as its EMA network; `changes`
    replace top-level entries."""
    config = yaml.safe_load((TINY_BUNDLE / "config.yaml").read_text())
    weights = load_file(TINY_BUNDLE / "model.safetensors")
    stage_config = {
        "stage": "pretrain-synthetic",
        "model_size": "tiny",
        "model": config["model"],
        "diffusion": config["diffusion"],
    }
    return {
        "glyphgen": {"kind": "stage", "stage": "pretrain-synthetic", "data_position": None},
        "state_dict": {f"ema.{k}": v for k, v in weights.items()},
        "hyper_parameters": {"config": stage_config},
        "global_step": 0,
        **changes,
    }


def bundle_copy(root: Path, name: str = "b") -> Path:
    out = root / name
    shutil.copytree(TINY_BUNDLE, out)
    (out / "samples.safetensors").unlink()  # a reference for test_parameterization, not a bundle file
    return out


def _no_png(root: Path) -> None:
    assert not list(root.glob("*.png"))


# -- resume ---------------------------------------------------------------------------------------------


def _resume(last_ckpt) -> Setup:
    """`glyphgen train` resuming a run whose config.yaml exists and whose last.ckpt is `last_ckpt(path)`."""

    def setup(root: Path) -> list[str]:
        write_shards(root / "s", 4, maxcount=4)
        run = root / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text(OLD_CONFIG)
        last_ckpt(run / "checkpoints" / "last.ckpt")
        overrides = ["stage=pretrain-synthetic", "model_size=tiny", "data.shards=s", "data.num_workers=0"]
        return ["train", *overrides, "trainer.accelerator=cpu", "trainer.max_steps=2", "--run-dir", "run"]

    return setup


def _run_untouched(root: Path) -> None:
    assert not (root / "PWNED").exists()
    assert (root / "run" / "config.yaml").read_text() == OLD_CONFIG
    assert sorted(p.name for p in (root / "run").iterdir()) == ["checkpoints", "config.yaml"]


LIGHTNING_ENTRIES = {"pytorch-lightning_version": "2.6.6", "optimizer_states": [], "lr_schedulers": []}


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _pickle_payload(path: Path) -> None:
    torch.save(stage_checkpoint(payload=Payload(path.parents[2] / "PWNED")), path)


# -- export ---------------------------------------------------------------------------------------------


def _export(ckpt: dict, *extra: str, out: str = "bundle") -> Setup:
    def setup(root: Path) -> list[str]:
        torch.save(ckpt, root / "stage.ckpt")
        return ["export", "stage.ckpt", "--out", out, *extra]

    return setup


def _nothing_exported(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["stage.ckpt"]


def _with_model(**fields) -> dict:
    ckpt = stage_checkpoint()
    ckpt["hyper_parameters"]["config"]["model"].update(fields)
    return ckpt


def _nan_ema() -> dict:
    ckpt = stage_checkpoint()
    ckpt["state_dict"]["ema.out.2.weight"] = torch.full_like(
        ckpt["state_dict"]["ema.out.2.weight"], torch.nan
    )
    return ckpt


def _overwrite(make_target) -> Setup:
    """`export --overwrite` onto whatever `make_target(root / "target")` left there."""

    def setup(root: Path) -> list[str]:
        make_target(root / "target")
        return _export(stage_checkpoint(), "--overwrite", out="target")(root)

    return setup


def _user_folder(path: Path) -> None:
    (path / "sub").mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    (path / "sub" / "data.csv").write_text("1,2\n")


def _kept(files: dict[str, str]) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        for name, text in files.items():
            assert (root / name).read_text() == text, name

    return check


def _bundle_with_notes(path: Path) -> None:
    bundle_copy(path.parent, path.name)
    (path / "notes.txt").write_text("mine")


# -- bundles --------------------------------------------------------------------------------------------


def _sample(change) -> Setup:
    """`glyphgen sample` from a copy of the tiny bundle that `change(folder)` damaged."""

    def setup(root: Path) -> list[str]:
        change(bundle_copy(root))
        return ["sample", "hi", "--base", "b", "--out", "x.png", "--steps", "2"]

    return setup


def _weights(change) -> Setup:
    def edit(folder: Path) -> None:
        weights = load_file(folder / "model.safetensors")
        change(weights)
        save_file(weights, folder / "model.safetensors")

    return edit


def _all_int8(weights: dict) -> None:
    for key, value in weights.items():
        weights[key] = value.to(torch.int8)


def _one_nan(weights: dict) -> None:
    weights["input_blocks.0.0.weight"][0, 0, 0, 0] = torch.nan


def _one_inf(weights: dict) -> None:
    weights["out.2.bias"][0] = torch.inf


def _config_line(old: str, new: str):
    def edit(folder: Path) -> None:
        text = (folder / "config.yaml").read_text()
        assert old in text
        (folder / "config.yaml").write_text(text.replace(old, new))

    return edit


CASES: list[Case] = [
    Case(
        "resume-garbage-last-ckpt",
        _resume(_garbage),
        "error",
        ("run/checkpoints/last.ckpt: not a readable checkpoint",),
        _run_untouched,
    ),
    Case(
        "resume-pickle-payload",
        _resume(_pickle_payload),
        "error",
        ("last.ckpt: not a readable checkpoint (refused by the weights-only reader", "posix.mkdir"),
        _run_untouched,
    ),
    Case(
        "resume-last-ckpt-glyphgen-entry-not-a-dict",
        _resume(lambda path: torch.save(stage_checkpoint(glyphgen=["stage"]), path)),
        "error",
        ("last.ckpt: not a glyphgen training checkpoint",),
        _run_untouched,
    ),
    Case(
        "resume-last-ckpt-not-written-by-lightning",
        _resume(lambda path: torch.save(stage_checkpoint(), path)),
        "error",
        (
            "last.ckpt: not a checkpoint a run can resume from (no pytorch-lightning_version, optimizer_states",
        ),
        _run_untouched,
    ),
    Case(
        "resume-last-ckpt-of-another-network",
        _resume(lambda path: torch.save(stage_checkpoint(**LIGHTNING_ENTRIES), path)),
        "error",
        ("last.ckpt: weights do not match config.yaml", "missing tensors: ema.", "of another shape"),
        _run_untouched,
    ),
    Case(
        "export-glyphgen-entry-not-a-dict",
        _export(stage_checkpoint(glyphgen="stage")),
        "error",
        ("stage.ckpt: not a glyphgen training checkpoint",),
        _nothing_exported,
    ),
    Case(
        "export-stored-config-reads-the-environment",
        _export(_with_model(model_channels="${oc.decode:${oc.env:HOME}}")),
        "error",
        ("stage.ckpt: hyper_parameters.config.model.model_channels: holds an interpolation",),
        _nothing_exported,
    ),
    Case(
        "export-nan-ema-weights",
        _export(_nan_ema()),
        "error",
        ("stage.ckpt: tensor out.2.weight holds NaN",),
        _nothing_exported,
    ),
    Case(
        "export-overwrite-a-user-folder",
        _overwrite(_user_folder),
        "error",
        (
            "target: not a glyphgen bundle (it also holds sub, thesis.txt)",
            "--overwrite replaces only bundles",
        ),
        _kept({"target/thesis.txt": "four years of work", "target/sub/data.csv": "1,2\n"}),
    ),
    Case(
        "export-overwrite-a-user-file",
        _overwrite(lambda path: path.write_text("my notes")),
        "error",
        ("target: not a glyphgen bundle (not a folder)",),
        _kept({"target": "my notes"}),
    ),
    Case(
        "export-overwrite-a-bundle-holding-a-user-file",
        _overwrite(_bundle_with_notes),
        "error",
        ("target: not a glyphgen bundle (it also holds notes.txt)",),
        _kept({"target/notes.txt": "mine"}),
    ),
    Case(
        "export-overwrite-a-folder-whose-config-is-not-a-bundle-config",
        _overwrite(
            lambda path: _config_line("glyphgen-bundle/1", "not-a-bundle")(
                bundle_copy(path.parent, path.name)
            )
        ),
        "error",
        ("target: not a glyphgen bundle (", "format"),
    ),
    Case(
        "bundle-int8-weights",
        _sample(_weights(_all_int8)),
        "error",
        ("b/model.safetensors: weights do not match config.yaml", "int8"),
        _no_png,
    ),
    Case(
        "bundle-nan-weights",
        _sample(_weights(_one_nan)),
        "error",
        ("b/model.safetensors: tensor input_blocks.0.0.weight holds NaN or infinite values",),
        _no_png,
    ),
    Case(
        "bundle-inf-weights",
        _sample(_weights(_one_inf)),
        "error",
        ("b/model.safetensors: tensor out.2.bias holds NaN or infinite values",),
        _no_png,
    ),
    Case(
        "bundle-config-reads-the-environment",
        _sample(_config_line("format: glyphgen-bundle/1", "format: ${oc.env:HOME}")),
        "error",
        ("b/config.yaml: format: holds an interpolation",),
        _no_png,
    ),
    Case(
        "bundle-config-decodes-a-model-size",
        _sample(_config_line("  model_channels: 8", "  model_channels: ${oc.decode:${oc.env:SHLVL,8}}")),
        "error",
        ("b/config.yaml: model.model_channels: holds an interpolation",),
        _no_png,
    ),
]
