"""`posttrain submit`: run a stage as a Ray job on a cluster, through Ray's Job Submission SDK.

The job ships the working directory (this checkout, without runs/, models/ and virtual
environments) as its runtime environment, runs `posttrain <stage> ARGS` on the head node, and its
driver joins the cluster (Ray sets RAY_ADDRESS for it), so the stage's worker groups are placed by
the config's placement groups across the nodes. The stage's arguments are checked here first (the
config loads, output_dir is a shared path), so a typo fails before anything is uploaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.stages.args import split_overrides, stage_config, stage_parser

# Never uploaded: run outputs, built models, environments and VCS data (gitignore patterns, anchored at
# the working directory's root so that the `posttrain/models` package is kept). Ray also honours .gitignore.
EXCLUDES = ["/runs/", "/models/", ".venv/", "venv/", ".git/", "__pycache__/", "*.pyc", ".pytest_cache/", "*.egg-info/"]
TERMINAL_FAILURE = ("FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """The cluster's job server cannot be reached or refuses the job."""


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def runtime_env(working_dir: str, env_vars: dict[str, str], pip: list[str]) -> dict:
    path = Path(working_dir)
    if not path.is_dir():
        raise ConfigError(f"--working-dir {working_dir}: not a directory")
    env = {"working_dir": str(path.resolve()), "excludes": list(EXCLUDES)}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    if pip:
        env["pip"] = list(pip)
    return env


def entrypoint(stage: str, args: list[str]) -> str:
    """The job's shell command; every argument quoted, so spaces and `$` reach the stage as typed."""
    return shlex.join(["posttrain", stage, *args])


def check_stage_args(stage: str, args: list[str]) -> str:
    """Parse the stage's arguments as the job will, load its config, and return the output_dir.

    On a cluster the output must outlive the job's temporary working directory and be reachable from
    every node, so a relative output_dir (the configs' default `runs/...`) is refused with the fix.
    """
    if stage not in ("sft", "opd"):
        raise ConfigError(f"submit: the stage must be sft or opd, got {stage!r}")
    parsed, bad = split_overrides(stage_parser(stage), args)
    if bad:
        raise ConfigError(f"submit: unrecognized arguments for `posttrain {stage}`: {' '.join(bad)}")
    cfg = stage_config(stage, parsed, pick_free_dir=False)
    if not Path(cfg.output_dir).is_absolute():
        raise ConfigError(
            f"submit: output_dir {cfg.output_dir!r} is relative; a job runs in a temporary copy of the working "
            "directory, so give a path every node sees, e.g. --output-dir /mnt/shared/runs/sft")
    return cfg.output_dir


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        # Ray >= 2.52 protects the job server with a token (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) where
        # the cluster enabled it; send it as `ray start` / `ray job` do. Older Ray has no token auth.
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        # Quietly: its "enabled for this Ray cluster" warning is meant for `ray start`, not for a client.
        setup_logger = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
        level = setup_logger.level
        setup_logger.setLevel(logging.ERROR)
        try:
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        finally:
            setup_logger.setLevel(level)
    except ImportError:
        pass
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as e:  # unreachable, not a job server, or auth refused
        raise SubmitError(f"cannot use the Ray job server at {address}: {str(e).splitlines()[0]}") from None


def submit(address: str, stage: str, args: list[str], working_dir: str = ".", env: dict | None = None,
           pip: list[str] | None = None, wait: bool = True, out=sys.stdout) -> int:
    """Submit the stage; with `wait`, follow its logs to the end. Returns the command's exit status."""
    output_dir = check_stage_args(stage, args)
    client = _client(address)
    job_id = client.submit_job(entrypoint=entrypoint(stage, args),
                               runtime_env=runtime_env(working_dir, env or {}, pip or []),
                               metadata={"posttrain_stage": stage, "output_dir": output_dir})
    print(f"[submit] job {job_id} submitted to {address}: {entrypoint(stage, args)}", file=out, flush=True)
    print(f"[submit] outputs: {output_dir}", file=out, flush=True)
    if not wait:
        print(f"[submit] not waiting; follow it with `ray job logs --address {address} --follow {job_id}`",
              file=out, flush=True)
        return 0
    try:
        asyncio.run(_follow(client, job_id, out))
    except KeyboardInterrupt:
        print(f"\n[submit] stopped following; the job runs on. Stop it with `ray job stop --address {address} "
              f"{job_id}`", file=out, flush=True)
        return 130
    status = _final_status(client, job_id)
    message = (client.get_job_info(job_id).message or "").strip()
    # A failed job's message repeats the tail of its log, which was just printed: keep its first line.
    message = message.splitlines()[0].rstrip(",:") if message else ""
    print(f"[submit] job {job_id}: {status}" + (f" ({message})" if message else ""), file=out, flush=True)
    return 1 if status in TERMINAL_FAILURE else 0


async def _follow(client, job_id: str, out) -> None:
    """Print the job's log as it grows; the SDK's stream ends when the job reaches a terminal state."""
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def _final_status(client, job_id: str, timeout_s: float = 30) -> str:
    # The log stream can close a moment before the status turns terminal.
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return str(status.value if hasattr(status, "value") else status)
        time.sleep(0.2)


def default_address() -> str:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_DASHBOARD_ADDRESS") or ""
