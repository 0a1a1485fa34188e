"""Stopping a run by signal: Ctrl-C (SIGINT) or SIGTERM (what `timeout`, Slurm and Kubernetes send).

The first signal asks the stage loop to finish the step in flight, write a checkpoint and stop
(`Interrupted`, which the CLI turns into the resume command and exit status 128 + the signal); a
second one stops at once (`StopNow`, a KeyboardInterrupt: the `with` blocks still release the Ray
workers on the way out). Either way no traceback reaches the user.

`StopSignals` is installed after `ray.init`, whose driver replaces SIGTERM's handler with one that
aborts the process with stack dumps.
"""

from __future__ import annotations

import os
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
        self.pipe: tuple[int, int] | None = None
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (a stage called from a thread keeps the defaults)
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        # Python runs a handler once however many times its signal came while the main thread was in C code (Ray's
        # ray.get): two Ctrl-C 0.3 s apart were one. The wakeup fd receives a byte per delivery, so it counts them.
        self.pipe = os.pipe()
        for fd in self.pipe:
            os.set_blocking(fd, False)
        self.previous_wakeup = signal.set_wakeup_fd(self.pipe[1], warn_on_full_buffer=False)

    def _deliveries(self) -> int:
        """Stop signals delivered since the last look (bytes the C-level handler wrote, one per delivery)."""
        if self.pipe is None:
            return 1
        seen = b""
        while True:
            try:
                chunk = os.read(self.pipe[0], 512)
            except BlockingIOError:
                break
            if not chunk:
                break
            seen += chunk
        return max(1, sum(1 for b in seen if b in SIGNALS))

    def _handle(self, signum: int, frame) -> None:
        if self.signum or self._deliveries() > 1:
            self.signum = self.signum or signum
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
        if self.pipe is not None:
            signal.set_wakeup_fd(self.previous_wakeup)
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None
