"""Config files as dicts: strict YAML (a key given twice is refused), `base:` variants, `key=value` overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from posttrain.config.fields import ConfigError


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a dict. `base: other.yaml` (relative to the file) makes it a variant: the base file's
    values, with this file's keys merged over them section by section; so a variant says only what differs."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_seen[-1]})" if _seen else "")) from None
    raw = strict_yaml(text, path, ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: 'base: {base}' leads back to itself")
    return _merge(read_config_yaml(base_path, (*_seen, path.resolve())), raw)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice: line {seen[key] + 1} and line {key_node.start_mark.line + 1}",
                    key_node.start_mark)
            seen.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep=deep)


def strict_yaml(text: str, path, error: type[Exception]):
    """`text` (from `path`) parsed as YAML, with a duplicate key or a syntax error raised as `error` naming the lines."""
    try:
        return yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.constructor.ConstructorError as e:
        raise error(f"{path}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in the nested dict; the value is parsed as YAML (so 2, true, null, [1,2])."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. trainer.num_workers=2")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[parts[-1]] = value
