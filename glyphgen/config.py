"""Loading typed configs: dataclass schema <- YAML files <- dotlist overrides, validated on load.

Every config in glyphgen is a dataclass with a docstring per field, living next to the code it
configures. This module only merges and validates them, and turns every mistake into a one-line
`ConfigError` that names the key and where its value came from (a file, an override, or the default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line and names the key and its source."""


class ConfigValueError(ValueError):
    """Raised by a schema's validation with the dotted key at fault; the loader adds the source."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def require(condition: bool, key: str, message: str) -> None:
    """Validation helper for `__post_init__`: raise `ConfigValueError(key, message)` unless `condition`.
    `key` is the field name relative to the dataclass; the loader prefixes where it is nested."""
    if not condition:
        raise ConfigValueError(key, message)


def require_path(path: str | None, key: str, kind: str = "file") -> None:
    """A path named by the config must exist (and be a folder when `kind == "folder"`)."""
    if path is None:
        return
    p = Path(path).expanduser()
    if kind == "folder":
        require(p.is_dir(), key, f"folder {path!r} does not exist")
    else:
        require(p.exists(), key, f"{kind} {path!r} does not exist")


def _flatten(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _flatten(v, f"{prefix}{k}.")
    if prefix:
        yield prefix[:-1]


def _one_line(err: OmegaConfBaseException) -> str:
    msg = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def load_config(
    schema: type[T],
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    defaults: T | None = None,
) -> T:
    """Build `schema` from its defaults, then each YAML file in order, then `values` (e.g. CLI
    options, keyed by dotted name), then dotlist `overrides` ("a.b=1"). Returns the dataclass
    instance, whose `__post_init__` checks have run. Any problem raises a one-line `ConfigError`.
    `defaults`, an instance of `schema` (e.g. a named model size), replaces the schema's defaults."""
    cfg = OmegaConf.structured(defaults if defaults is not None else schema)
    source: dict[str, str] = {}

    def merge(layer: Any, where: str) -> None:
        nonlocal cfg
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{where}: {_one_line(e)}") from None
        for key in _flatten(OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else layer):
            source[key] = where

    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            layer = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends: report, never a traceback
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(OmegaConf.to_container(layer), dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        merge(layer, str(path))
    for key, value in (values or {}).items():
        if value is not None:
            layer: Any = value
            for part in reversed(key.split(".")):
                layer = {part: layer}
            merge(layer, f"option {key}={value!r}")
    _merge_dotlist(list(overrides), merge, "override")

    return _instantiate(cfg, "", source)  # type: ignore[return-value]


def _instantiate(node: DictConfig, prefix: str, source: Mapping[str, str]) -> Any:
    """`OmegaConf.to_object`, innermost configs first, so a schema's `__post_init__` can name its
    keys relative to itself and the error still carries the full dotted key and its source."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            _instantiate(child, f"{prefix}{key}.", source)
    try:
        return OmegaConf.to_object(node)
    except ConfigValueError as e:
        key = prefix + e.key
        raise ConfigError(f"{key}: {e.message} ({_source_of(key, source)})") from None
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None


def _merge_dotlist(items: list[str], merge, what: str) -> None:
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r}: expected key=value")
        try:
            layer = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"{what} {item!r}: {_one_line(e)}") from None
        merge(layer, f"{what} {item!r}")


def _source_of(key: str, source: Mapping[str, str]) -> str:
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        where = source.get(".".join(parts[:i]))
        if where:
            return f"set by {where}" if where.startswith(("override", "option")) else f"set in {where}"
    return "default value"


def to_dict(cfg: Any) -> dict:
    """A dataclass config as plain containers (for manifests, checkpoints and resolved-config files)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by `load_config`)."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
