"""The local Ray's processes do not outlive the driver that started them, however it ends.

Ray ties its GCS and raylet to the driver (PR_SET_PDEATHSIG), and the workers die with the
raylet; but the raylet's dashboard and runtime-env agents only notice their parent is gone after
five polls, and then spend up to 60 s trying to tell the dead GCS about it
(`ray._private.process_watcher.report_raylet_error_logs`), so a SIGKILLed driver left them
running, orphaned, for about a minute and a half. `watch` starts this module as a small process
of its own session (a terminal's Ctrl-C does not reach it) holding the read end of a pipe from the
driver: when the pipe closes — the driver exited, cleanly or not — it kills the processes it was
given that still run (matched by pid and start time, so a reused pid is left alone).

Run as `python -m posttrain.infra.reaper PID:START_TIME ...`; only psutil is imported.
"""

from __future__ import annotations

import subprocess
import sys
import time

GRACE_S = 2.0  # a clean exit (ray.shutdown) stops them itself; give it that long first


def watch(processes) -> subprocess.Popen | None:
    """Start the watcher for `processes` (psutil.Process); the returned Popen's stdin is the pipe,
    held open by this process until it ends."""
    if not processes:
        return None
    specs = [f"{p.pid}:{p.create_time()!r}" for p in processes]
    return subprocess.Popen([sys.executable, "-m", "posttrain.infra.reaper", *specs], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main(specs: list[str]) -> None:
    import psutil

    sys.stdin.buffer.read()  # returns when the driver's end of the pipe closes
    time.sleep(GRACE_S)
    for spec in specs:
        pid, _, started = spec.partition(":")
        try:
            process = psutil.Process(int(pid))
            if abs(process.create_time() - float(started)) < 1e-3:
                process.kill()
        except (psutil.Error, ValueError):
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
