"""Where a model comes from: a local directory, or a hub id that transformers resolves.

One rule for every place that takes a model (the stages' `model.path`, the cascade's teachers,
`posttrain eval`): a path that exists is local; otherwise it is a hub id only if it has the hub's
`org/name` shape — one slash, not absolute, not starting with `.` or `~`. Anything else names a
local directory that is not there, and is refused before any work with the field that named it.
"""

from __future__ import annotations

from pathlib import Path


def is_hub_id(path: str) -> bool:
    """`org/name` and not an existing local path (e.g. Qwen/Qwen3-30B-A3B-Instruct-2507)."""
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def require_model(path: str, field: str, hint: str = "") -> None:
    """Refuse `path` (named by `field`, e.g. `model.path`) unless it is a local path or a hub id."""
    if Path(path).exists() or is_hub_id(path):
        return
    raise FileNotFoundError(hint or f"{field}: {path} does not exist (expected a local directory or a hub id org/name)")
