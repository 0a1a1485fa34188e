"""Crash-safe checkpoint directories.

A checkpoint is written under a hidden `.incomplete-*` name and renamed into place only when every
file is on disk, then `latest` is replaced atomically; a kill at any moment leaves the previous
checkpoint whole and the partial one ignorable. `trainer_state.json` (step, data cursor, stage
state) is the last file written, so its presence marks a complete checkpoint; `manifest.json`
(size and sha256 of every other file) is checked before a checkpoint is resumed from, and one that
does not match — a disk error, a copy cut short, a hand edit — is passed over, with a warning, for
the one before it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from posttrain.infra import faults

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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, most often); the previous one is intact."""


def save(write_files: Callable[[str], None], root: Path, step: int, state: dict, keep: int) -> Path:
    """`write_files(tag)` writes the workers' files into `root/tag`; then the checkpoint is sealed.

    A failure while writing (ENOSPC above all) removes the partial directory, which frees what it
    held, and stops the run with an error that says what happened, where, and which complete
    checkpoint a `--resume` will continue from.
    """
    root = Path(root)
    tag = incomplete_tag(step)
    try:
        write_files(tag)
        faults.kill_self("kill_during_checkpoint_write", step)
        faults.raise_enospc("enospc_during_checkpoint_write", step, str(root / tag))
        return commit(root, step, state, keep)
    except OSError as e:  # Ray re-raises a worker's OSError as a subclass of OSError too
        cause = getattr(e, "cause", None) or e
        shutil.rmtree(root / tag, ignore_errors=True)
        previous = complete_checkpoints(root)
        kept = f"the previous checkpoint {previous[-1][1]} is intact" if previous else "there is no earlier checkpoint"
        what = "no space left on device" if getattr(cause, "errno", None) == errno.ENOSPC else f"{type(cause).__name__}: {cause}"
        raise CheckpointWriteError(
            getattr(cause, "errno", None) or 0,
            f"writing checkpoint {step_name(step)} under {root} failed: {what}; the partial checkpoint was removed and "
            f"{kept}; free space and continue with --resume") from e


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


def verify(path: Path, checksums: bool = True) -> str | None:
    """None when `path` matches its manifest (every file present, same size, same sha256); else why not."""
    path = Path(path)
    try:
        files = json.loads((path / MANIFEST_FILE).read_text())["files"]
        json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST_FILE} or {STATE_FILE} ({e})"
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
    if checksums:
        # Sizes first (cheap); then the hashes, which read every byte once.
        actual = manifest(path)["files"]
        for name, entry in files.items():
            if actual[name]["sha256"] != entry["sha256"]:
                return f"{name} does not match its sha256 in {MANIFEST_FILE}"
    return None


def latest_checkpoint(root: Path, checksums: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint that matches its manifest, with its state; a damaged one is skipped with a warning."""
    for _, path in reversed(complete_checkpoints(root)):
        problem = verify(path, checksums)
        if problem is None:
            return path, json.loads((path / STATE_FILE).read_text())
        print(f"[checkpoint] WARNING: {path} is corrupt or partial ({problem}); falling back to the previous "
              "checkpoint", flush=True)
    return None


def prepare_checkpoint_root(root: Path) -> None:
    """Remove leftovers of an interrupted write (never a complete checkpoint)."""
    root.mkdir(parents=True, exist_ok=True)
    for path in root.iterdir():
        if path.name.startswith(".incomplete-"):
            shutil.rmtree(path, ignore_errors=True)
