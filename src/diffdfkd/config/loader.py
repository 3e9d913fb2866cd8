"""Loading configs: YAML read strictly into the schema's dataclasses, ``a.b=value`` overrides on top.

An unknown key is an error naming it and the valid keys; a duplicate key or a syntax error is an error
naming its line; only plain data, never tags that build objects. Numbers are read as YAML 1.2 reads
them (``1e-3``, ``5e-4`` and ``.5`` are floats, where YAML 1.1 reads the first two as strings), and every
float field must be finite: NaN and infinity are refused. ``diffdfkd.runinfo`` records the resolved
config, seed, package versions and git SHA in an output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffdfkd.config.schema import ConfigError, ExperimentConfig

C = TypeVar("C")


# ---------------------------------------------------------------------------------------------------
# Strict YAML: safe (plain data only), YAML 1.2 floats, duplicate keys refused.

# YAML 1.2 core-schema floats: 1e-3, 5e-4, .5, 1., +.5, .inf, .nan (YAML 1.1 needs "1.0e-3").
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build objects) with YAML 1.2 floats; a repeated key is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` strictly (see ``_StrictLoader``); errors name ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {error}") from None


# ---------------------------------------------------------------------------------------------------
# Strict conversion between dicts and dataclasses.


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field's type annotation, converting where lossless (int -> float)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {annotation.__name__} fields")
        return from_dict(annotation, value, where)
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation)
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, options[0], where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float) and (isinstance(value, bool) or not isinstance(value, annotation)):
        kind = "an integer" if annotation is int else "a number"
        raise ConfigError(f"{where} must be {kind}, got {value!r}")
    if annotation is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` naming the valid ones."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' of ' + where if where else ''}: {', '.join(valid)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where or cls.__name__}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        value = load_yaml(raw, f"the value of override {item!r}") if raw.strip() else ""
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a field inside a value")
        node[leaf] = value
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, cls: type[C] = ExperimentConfig
) -> C:
    """Load a YAML config strictly, apply ``a.b=value`` overrides, and build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = load_yaml(path.read_text(), f"config file {path}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def replace(config: C, **changes: Any) -> C:
    """``dataclasses.replace`` with nested ``"a.b"`` keys: ``replace(cfg, **{"synth.batch_size": 8})``."""
    tree = parse_overrides([f"{k}={json.dumps(v)}" for k, v in changes.items()])
    return from_dict(type(config), _merge(to_dict(config), tree))
