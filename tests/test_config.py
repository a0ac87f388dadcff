"""Config loading: defaults <- YAML <- options <- overrides, and one-line errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from glyphgen.config import (
    Choice,
    ConfigError,
    ConfigValueError,
    load_config,
    require,
    require_path,
    save_config,
    to_dict,
)
from glyphgen.text.tokenizer import TokenizerConfig


@dataclass
class Inner:
    size: int = 4
    """A positive size."""
    folder: str | None = None
    """An existing folder, if given."""

    def __post_init__(self):
        require(self.size > 0, "size", f"must be > 0, got {self.size}")
        require_path(self.folder, "folder", kind="folder")


@dataclass
class Outer:
    name: str = "x"
    """A name."""
    inner: Inner = field(default_factory=Inner)
    """Nested settings."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer."""


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("name: from-file\ninner:\n  size: 7\n")
    cfg = load_config(Outer, [f], ["inner.size=9"], values={"name": "from-option"})
    assert (cfg.name, cfg.inner.size) == ("from-option", 9)
    assert isinstance(cfg.inner, Inner)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner:\n  sise: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*sise"):
        load_config(Outer, [f])


def test_wrong_type_names_override():
    with pytest.raises(ConfigError, match=r"override 'inner.size=big'"):
        load_config(Outer, overrides=["inner.size=big"])


def test_validation_error_names_full_key_and_source(tmp_path):
    f = tmp_path / "neg.yaml"
    f.write_text("inner:\n  size: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, [f])
    assert str(e.value) == f"inner.size: must be > 0, got -1 (set in {f})"
    with pytest.raises(ConfigError, match=r"^tokenizer\.max_length: .*set by override"):
        load_config(Outer, overrides=["tokenizer.max_length=2"])


def test_missing_path_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.folder: folder '.*nowhere' does not exist"):
        load_config(Outer, overrides=[f"inner.folder={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(Outer, [tmp_path / "missing.yaml"])


def test_bad_yaml_and_bad_override_syntax(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(Outer, [f])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(Outer, overrides=["inner.size"])
    errors = [str(e) for e in _errors()]
    assert all("\n" not in e for e in errors)


def _errors():
    for overrides in (["nope=1"], ["inner.size=x"], ["inner.size=0"], ["tokenizer.alphabet=aa"]):
        with pytest.raises(ConfigError) as e:
            load_config(Outer, overrides=overrides)
        yield e.value


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(Outer, overrides=["inner.size=5", "name=n"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, [tmp_path / "resolved.yaml"]) == cfg


class Colour(Choice):
    dark_blue = "dark-blue"
    red = "red"


@dataclass
class Painted:
    colour: Colour = Colour.red
    """A colour."""
    trim: Colour | None = None
    """An optional colour."""

    def __post_init__(self):
        self.colour = Colour.parse(self.colour, "colour")
        if self.trim is not None:
            self.trim = Colour.parse(self.trim, "trim")


def test_choices_load_from_their_strings_and_save_as_plain_strings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("colour: dark-blue\ntrim: red\n")
    cfg = load_config(Painted, [f])
    assert cfg.colour is Colour.dark_blue and cfg.trim is Colour.red
    assert cfg.colour == "dark-blue" and f"{cfg.colour}" == str(cfg.colour) == "dark-blue"
    assert {"dark-blue": 1}[cfg.colour] == 1 and repr(cfg.colour) == "'dark-blue'"
    plain = to_dict(cfg)
    assert plain == {"colour": "dark-blue", "trim": "red"} and type(plain["colour"]) is str
    save_config(cfg, tmp_path / "saved.yaml")
    assert (tmp_path / "saved.yaml").read_text() == "colour: dark-blue\ntrim: red\n"
    assert load_config(Painted, [tmp_path / "saved.yaml"]) == cfg


def test_a_bad_choice_names_the_key_and_the_choices(tmp_path):
    says = "colour: must be one of dark-blue, red, got 'green'"
    with pytest.raises(ConfigError) as e:
        load_config(Painted, overrides=["colour=green"])
    assert str(e.value) == f"override 'colour=green': {says}"
    f = tmp_path / "c.yaml"
    f.write_text("trim: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Painted, [f])
    assert str(e.value) == f"{f}: trim: must be one of dark-blue, red, got 3"
    # A dataclass built in Python is checked (and converted) by its __post_init__.
    with pytest.raises(ConfigValueError, match=f"^{says}$"):
        Painted(colour="green")
    assert Painted(colour="red", trim="dark-blue") == Painted(Colour.red, Colour.dark_blue)


def test_stored_configs_with_plain_strings_load_and_save_unchanged(tmp_path):
    """An exported bundle's config.yaml (written before the typed choices) and a checkpoint's stored
    stage config (plain strings) load into the typed fields, and save back as the same strings."""
    from pathlib import Path

    from glyphgen.diffusion import Sampler, Schedule
    from glyphgen.inference.format import BundleConfig, read_config
    from glyphgen.models.unet import TextAttention
    from glyphgen.training.config import NanPolicy, Stage, StageConfig

    bundle = Path(__file__).parent / "data" / "bundle-74f265e"
    cfg = read_config(bundle)
    assert (cfg.diffusion.sampler, cfg.diffusion.schedule) == (Sampler.ddim, Schedule.cosine)
    assert cfg.model.text_attention is TextAttention.weave
    save_config(cfg, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    assert "  sampler: ddim\n" in saved and "  text_attention: weave\n" in saved
    assert load_config(BundleConfig, [tmp_path / "config.yaml"]) == cfg

    stored = {"stage": "finetune-real", "trainer": {"nan_policy": "skip"}, "diffusion": {"sampler": "ddpm"}}
    stage = load_config(StageConfig, values=stored)
    assert (stage.stage, stage.trainer.nan_policy) == (Stage.finetune_real, NanPolicy.skip)
    assert to_dict(stage)["stage"] == "finetune-real" and to_dict(stage)["diffusion"]["sampler"] == "ddpm"


def test_cli_overrides_may_follow_options(capsys):
    from glyphgen.cli import main, parse_args

    args = parse_args(["pipeline", "p.yaml", "a=1", "--stage", "s", "b=2", "--set", "run_root=r", "c=3"])
    assert (args.overrides, args.stage, args.set) == (["a=1", "b=2", "c=3"], "s", ["run_root=r"])
    # The model-info table shows the override took effect whichever side of the option it is on.
    tables = []
    for argv in (
        ["micro", "model_channels=8", "--text-length", "8"],
        ["micro", "--text-length", "8", "model_channels=8"],
    ):
        assert main(["model-info", *argv]) == 0
        tables.append(capsys.readouterr().out)
    assert main(["model-info", "micro", "--text-length", "8"]) == 0
    assert tables[0] == tables[1] != capsys.readouterr().out
    for stray in (["--bogus"], ["loose-word"]):  # anything but KEY=VALUE is still refused
        with pytest.raises(SystemExit):
            parse_args(["pipeline", "p.yaml", "--stage", "s", *stray])
        assert stray[0] in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a verb without overrides takes none
        parse_args(["export", "c.ckpt", "--out", "b", "a=1"])
