"""Where the repository's own files are (data mixtures, configs), wherever the command runs from."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # posttrain/infra/paths.py → the checkout


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists (relative to the working directory), else relative to the repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    candidate = REPO_ROOT / path
    return candidate if candidate.exists() else path
