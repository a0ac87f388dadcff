"""Loading typed configs: dataclass schema <- YAML files <- dotlist overrides, validated on load.

Every config in glyphgen is a dataclass with a docstring per field, living next to the code it
configures. This module only merges and validates them, and turns every mistake into a one-line
`ConfigError` that names the key and where its value came from (a file, an override, or the default).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError
from omegaconf.nodes import EnumNode

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line and names the key and its source."""


class ConfigValueError(ValueError):
    """Raised by a schema's validation with the dotted key at fault; the loader adds the source."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class Choice(str, enum.Enum):
    """Base of a config field's closed set of names: `class Sampler(Choice): ddim = "ddim"`. OmegaConf
    checks a field typed with a subclass whenever a file, option or override sets it (a schema's
    `__post_init__` calls `parse` for dataclasses built in Python). Otherwise a member behaves as its
    string: it compares and hashes equal to it, prints, formats and reprs as it, and `to_dict` and
    `save_config` write it, so YAML files, checkpoints and bundles hold plain strings such as
    `sampler: ddim` and `cfg.sampler == "ddim"` holds. Give members their value as name where it is an
    identifier (OmegaConf also accepts a member's name)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The accepted names, in declaration order."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: Any, key: str):
        """`value` as a member, for a schema's `__post_init__` (a dataclass built in Python is not
        checked by OmegaConf); anything else raises `ConfigValueError(key, ...)` naming the choices."""
        if value not in cls.values():
            raise ConfigValueError(key, cls.refusal(value))
        return cls(value)

    @classmethod
    def refusal(cls, value: Any) -> str:
        return f"must be one of {', '.join(cls.values())}, got {value!r}"


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
    node = getattr(err, "child_node", None)
    if isinstance(err, ValidationError) and isinstance(node, EnumNode) and issubclass(node.enum_type, Choice):
        # OmegaConf lists the members' Python names; say it as a schema's own check would.
        return f"{err.full_key}: {node.enum_type.refusal(getattr(err, 'value', None))}"
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
    """A dataclass config as plain containers (for manifests, checkpoints and resolved-config files):
    `Choice` members become their strings, which a weights-only checkpoint load and YAML accept."""
    return _plain(dataclasses.asdict(cfg))


def _plain(node: Any) -> Any:
    if isinstance(node, enum.Enum):
        return node.value
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return type(node)(_plain(value) for value in node)
    return node


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by `load_config`)."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
