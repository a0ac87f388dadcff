"""Config loading: defaults <- YAML <- options <- overrides, and one-line errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from glyphgen.config import ConfigError, load_config, require, require_path, save_config
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
