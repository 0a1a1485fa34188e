"""Helpers for the kill-and-resume tests: a `posttrain` command in its own process, killed for real,
and a check that nothing it started (Ray's GCS, raylet, workers) outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], fault: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """`python -m posttrain.cli ARGS` with POSTTRAIN_FAULT=`fault`; asserts that no process it
    started is left once it is gone, killing (by pid) any that is, so a failing test leaks nothing."""
    import psutil

    mark = uuid.uuid4().hex
    env = {**os.environ, "POSTTRAIN_FAULT": fault, "POSTTRAIN_TEST_MARK": mark,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as a user's run has
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)

    def leftovers():
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("POSTTRAIN_TEST_MARK") == mark:
                    found.append(p)
            except (psutil.Error, OSError):
                pass
        return found

    deadline = time.monotonic() + 30  # Ray's processes notice their driver is gone within seconds
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"processes outlived the killed run: {[(p.pid, p.name()) for p in left]}"
    return proc
