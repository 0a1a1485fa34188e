"""`load_config`: a config file and overrides → the typed dataclass tree, each key converted and checked."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from posttrain.config.checks import check_values
from posttrain.config.fields import ConfigError
from posttrain.config.files import apply_override, read_config_yaml


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Read `path` (YAML, with its `base:` chain), apply `key=value` overrides, and build a `cls` dataclass."""
    raw: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = read_config_yaml(path)
    for item in overrides or []:
        apply_override(raw, item)
    cfg = _build(cls, raw, prefix="", where=where)
    check_values(cfg, where)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _build(cls: type, raw: Any, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint} (valid keys: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        section = dataclasses.is_dataclass(hints[name])
        if section:
            # A stage may default a section differently (OPD: constant lr 1e-6, frozen router);
            # the YAML's keys then apply on top of that default, not of the class's own.
            base = {}
            if f.default_factory not in (dataclasses.MISSING, hints[name]):
                base = dataclasses.asdict(f.default_factory())
            given = raw.get(name) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"{where}: '{key}' expected a mapping, got {given!r}")
            values[name] = _build(hints[name], {**base, **given}, key + ".", where)
        elif name in raw:
            values[name] = _convert(hints[name], raw[name], key, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required value '{key}'")
    return cls(**values)


def _convert(tp, value, key: str, where: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".", where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' expected a list, got {value!r}")
        return [_convert(item_tp, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp} for {key}")
    raise ConfigError(f"{where}: '{key}' expected {tp.__name__}, got {type(value).__name__} {value!r}")
