"""Crash-safe checkpoint directories.

A checkpoint is written under a hidden `.incomplete-*` name and renamed into place only when every
file is on disk, then `latest` is replaced atomically; a kill at any moment leaves the previous
checkpoint whole and the partial one ignorable. `trainer_state.json` (step, data cursor, stage
state) is the last file written, so its presence marks a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary sibling directory; rename it to `final` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(f".incomplete-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def incomplete_tag(step: int) -> str:
    return f".incomplete-{step_name(step)}"


def manifest(directory: Path) -> dict:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        files[str(path.relative_to(directory))] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return {"files": files}


def commit(root: Path, step: int, state: dict, keep: int) -> Path:
    """Seal the workers' `.incomplete-step_N` directory as `step_N`, point `latest` at it, prune."""
    root = Path(root)
    tmp = root / incomplete_tag(step)
    write_json_atomic(tmp / MANIFEST_FILE, manifest(tmp))
    write_json_atomic(tmp / STATE_FILE, state)
    final = root / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    (root / ".latest.tmp").write_text(step_name(step))
    os.replace(root / ".latest.tmp", root / "latest")
    for _, old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.exists():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith("step_") and (path / STATE_FILE).exists():
            found.append((int(path.name.split("_")[1]), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> tuple[Path, dict] | None:
    found = complete_checkpoints(root)
    if not found:
        return None
    path = found[-1][1]
    return path, json.loads((path / STATE_FILE).read_text())


def prepare_checkpoint_root(root: Path) -> None:
    """Remove leftovers of an interrupted write (never a complete checkpoint)."""
    root.mkdir(parents=True, exist_ok=True)
    for path in root.iterdir():
        if path.name.startswith(".incomplete-"):
            shutil.rmtree(path, ignore_errors=True)
