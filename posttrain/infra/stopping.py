"""Stopping a run by signal: Ctrl-C (SIGINT) or SIGTERM (what `timeout`, Slurm and Kubernetes send).

The first signal asks the stage loop to finish the step in flight, write a checkpoint and stop
(`Interrupted`, which the CLI turns into the resume command and exit status 128 + the signal); a
second one stops at once (`StopNow`, a KeyboardInterrupt: the `with` blocks still release the Ray
workers on the way out). Either way no traceback reaches the user.

`StopSignals` is installed after `ray.init`, whose driver replaces SIGTERM's handler with one that
aborts the process with stack dumps.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from posttrain.infra.closing import Closing

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(KeyboardInterrupt):
    """A second stop signal: leave at once, without finishing the step."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(Exception):
    """The run stopped on a signal after step `step`, with its checkpoint written."""

    def __init__(self, signum: int, stage: str, output_dir: Path, step: int, checkpoint: Path | None):
        self.signum, self.stage, self.output_dir, self.step, self.checkpoint = signum, stage, output_dir, step, checkpoint
        where = f"checkpoint {checkpoint} written" if checkpoint else "no step finished, nothing written"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {where}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended: 130 SIGINT, 143 SIGTERM


class StopSignals(Closing):
    """SIGINT and SIGTERM handlers for the length of a stage loop; `signum` is the first signal seen (0: none)."""

    def __init__(self, stage: str):
        self.stage, self.signum = stage, 0
        self.previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (a stage called from a thread keeps the defaults)
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise StopNow(signum)
        self.signum = signum
        print(f"\n[{self.stage}] {signal.Signals(signum).name}: finishing this step, then a checkpoint and stop "
              f"(send it again to stop at once, losing the step)", flush=True)

    @property
    def requested(self) -> bool:
        return bool(self.signum)

    def interrupted(self, output_dir: Path, step: int, checkpoint: Path | None) -> Interrupted:
        return Interrupted(self.signum, self.stage, Path(output_dir), step, checkpoint)

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
