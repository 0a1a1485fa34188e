"""Deterministic fault injection for the reliability tests, read from one place: `POSTTRAIN_FAULT`.

`POSTTRAIN_FAULT="name:N[,name:N...]"` arms the named fault at step (or call) N. Unset — always,
outside the tests — every hook is a dictionary lookup that answers no. The faults:

  kill_after_step:N                SIGKILL the driver after step N is trained and logged, before its checkpoint
  stall_after_step:N               the driver sleeps (up to 120 s) after step N is logged, before its checkpoint:
                                   a slow step, so that a test's signal lands inside it on any machine
  pause_after_step:N               the driver waits (up to 120 s) after step N is logged until a stop is
                                   requested: a signal sent once it says so stops the run after step N exactly,
                                   however late the signal comes (a loaded machine trains more steps meanwhile)
  kill_during_checkpoint_write:N   SIGKILL the driver while checkpoint N is half written (workers' files
                                   on disk, no manifest, not committed)
  enospc_during_checkpoint_write:N the same moment raises OSError(ENOSPC), as a full disk does
  nan_loss:N                       trainer workers multiply step N's loss by NaN (all ranks)
  kill_trainer_worker:N            the driver kills trainer rank 0 while its N-th train call is in flight
  kill_rollout_worker:N            the driver kills a rollout actor while its N-th generate call is in flight
  kill_teacher_worker:N            the driver kills a teacher actor while its N-th score call is in flight

What `posttrain check` must catch (tests/stages/opd/test_preflight.py), each breaking one thing it guards:
  shift_teacher_input:1            the student-as-teacher scores with a one-token offset between prompt and response
  sampler_temperature:N            an hf rollout worker's N-th sampling call runs at 1.5 x the temperature
  perturb_teacher_replica:1        the last replica of the first teacher gets noise on its weights
  stale_rollout:N                  the driver's N-th weight sync into the rollout engines is skipped

A kill is real (SIGKILL / `ray.kill`), so what is tested is how the run survives, not a simulation of it.
Each fault fires once per process. The variable is passed on to Ray actors (`cluster.spawn`).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

ENV = "POSTTRAIN_FAULT"
_fired: set[tuple[str, int]] = set()
_calls: dict[str, int] = {}


def _armed() -> set[tuple[str, int]]:
    spec = os.environ.get(ENV, "")
    out = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, n = item.rpartition(":")
        out.add((name, int(n)))
    return out


def fires(name: str, n: int) -> bool:
    """True once if fault `name` is armed at `n`."""
    if not os.environ.get(ENV) or (name, n) in _fired or (name, n) not in _armed():
        return False
    _fired.add((name, n))
    return True


def fires_on_call(name: str) -> bool:
    """Like `fires`, counting the calls of `name` in this process (1-based) instead of steps."""
    if not os.environ.get(ENV):
        return False
    _calls[name] = _calls.get(name, 0) + 1
    return fires(name, _calls[name])


def kill_self(name: str, n: int) -> None:
    """SIGKILL this process if `name` is armed at `n`: no handler, no cleanup, as an OOM kill or a preemption."""
    if fires(name, n):
        print(f"[fault] {name}:{n}: SIGKILL", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def after_step(step: int, stop_requested: Callable[[], bool] = lambda: False) -> None:
    """The faults a stage loop offers after step `step` is logged, before its checkpoint."""
    kill_self("kill_after_step", step)
    stall("stall_after_step", step)
    if fires("pause_after_step", step):
        print(f"[fault] pause_after_step:{step}: waiting for a stop request", flush=True)
        deadline = time.monotonic() + 120.0
        while not stop_requested() and time.monotonic() < deadline:
            time.sleep(0.05)


def stall(name: str, n: int, seconds: float = 120.0) -> None:
    """Sleep if `name` is armed at `n` (a signal handler that raises ends the sleep, as it would a slow step)."""
    if fires(name, n):
        print(f"[fault] {name}:{n}: sleeping {seconds:.0f} s", flush=True)
        time.sleep(seconds)


def raise_enospc(name: str, n: int, where: str) -> None:
    if fires(name, n):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)


def reset() -> None:
    """Forget what fired and the call counts (a test arms faults again in the same process)."""
    _fired.clear()
    _calls.clear()


def env_for_actors() -> dict:
    """The runtime_env that carries an armed fault into Ray actors (empty when none is armed)."""
    spec = os.environ.get(ENV)
    return {"env_vars": {ENV: spec}} if spec else {}
