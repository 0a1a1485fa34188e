"""One writer per output directory: a lock file taken before any work and released on every exit.

Two runs writing one directory interleave their metrics, overwrite each other's config and export, and the
"holds a run" refusal only starts once a checkpoint exists (minutes of model loading on a cluster). The lock
is a file created exclusively (`O_EXCL`: atomic on a local or NFS file system) holding who took it; a lock
whose process is gone on this host (a crash, a kill -9: nothing released it) is stale and taken over, said so.
A lock held from another host cannot be checked from here: it is refused with how to clear it by hand.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".posttrain.lock"


class LockHeld(RuntimeError):
    """Another live run holds the output directory."""


def _me() -> dict:
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs (on this host; the start time tells a reused pid apart)."""
    import psutil

    try:
        return abs(psutil.Process(int(holder["pid"])).create_time() - float(holder["started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def acquire(directory: Path) -> Path:
    """Take `directory`'s lock (the directory exists); raise LockHeld naming a live holder."""
    lock, me = Path(directory) / LOCK_NAME, _me()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            if same_host and (holder.get("pid") == me["pid"] or not _alive(holder)):
                if holder.get("pid") != me["pid"]:
                    print(f"[posttrain] {lock}: the run that held it (pid {holder.get('pid')}) is gone; taking it over",
                          flush=True)
                lock.unlink(missing_ok=True)
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            how = ("" if same_host else f"; that host's runs cannot be checked from here: if that run has ended, "
                   f"delete {lock}")
            raise LockHeld(f"{directory} is in use by another run: pid {holder.get('pid')} on {holder.get('host')} "
                           f"(started {since}, {holder.get('command', '?')}){how}; give another --output-dir, or wait "
                           "for it to end") from None
        with os.fdopen(fd, "w") as f:
            json.dump({**me, "command": " ".join(os.sys.argv[:3])}, f)
        atexit.register(release, lock)
        return lock
    raise LockHeld(f"{lock}: could not be taken")


def release(lock: Path) -> None:
    """Drop the lock if it is this process's own."""
    try:
        if json.loads(Path(lock).read_text()).get("pid") == os.getpid():
            Path(lock).unlink()
    except (OSError, ValueError):
        pass
