"""The resume contract: what a run is, recorded at its start, and what `--resume` may change.

A run's identity is its resolved config (model, data mixture, seeds, teachers and their steps, loss, schedule,
batch shape, the checkpoint's layout) and the content of its local data files (sha256 of the mixture file and of
every local source it names; a hub source is its id, subset, split and take, as the mixture file says). It is
written to `run_identity.json` when the run starts. `--resume` compares the command's config with it:
- a change to a key in `MAY_CHANGE` (run length, logging, checkpoint cadence, where and how the workers run) is
  taken, printed, and appended to `config_changes.jsonl` with the step it applies from;
- any other change stops the command (exit 2) naming every changed key with its recorded and its new value,
  before any data, model or Ray work — unless `--accept-change KEY` takes it on purpose, recorded the same way.
So `config.yaml` (the values now in force) and `config_changes.jsonl` (since when) never claim a value that did not run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.config import ConfigError, to_dict
from posttrain.data.mixture import DataError, load_mixture_spec
from posttrain.infra.paths import resolve_path

IDENTITY_FILE, CHANGES_FILE = "run_identity.json", "config_changes.jsonl"
# Keys (or sections, ending in ".") a resumed run may change; everything else is the run's identity.
MAY_CHANGE = (
    "trainer.max_steps", "trainer.stop_after_step", "output_dir", "logging.", "checkpoint.", "ray.", "cluster.",
    "eval.every", "eval.limit", "eval.max_new_tokens",
    *(f"{group}.{key}" for group in ("trainer", "rollout", "teacher")
      for key in ("cpus_per_worker", "threads_per_worker", "placement", "max_restarts")),
)


class ResumeMismatch(ConfigError):
    """`--resume` with a change to what the run is."""


def identity(cfg) -> dict:
    """The run's identity: its config as dotted keys, and its local data files' sha256."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and key != "extra":
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(to_dict(cfg), "")
    return {"config": flat, "data": data_hashes(cfg.data.mixture)}


def data_hashes(mixture: str) -> dict[str, str]:
    path = resolve_path(mixture)
    try:
        spec = load_mixture_spec(path)
    except DataError:
        return {}
    files = [Path(path), *(s.path for s in spec.sources if s.path is not None)]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def may_change(key: str, accepted: tuple[str, ...] = ()) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE) or \
        any(key == a or key.startswith(a.rstrip(".") + ".") for a in accepted)


def check_resume(run_path: Path, cfg, resume: bool, from_step: int, accepted: tuple[str, ...] = (),
                 record: bool = True) -> list[dict]:
    """At a fresh start record the identity; on resume compare (see the module doc). Returns the changes taken.
    `record=False` (a finished run, where nothing will run): only refuse, write nothing."""
    recorded_file, now = run_path / IDENTITY_FILE, identity(cfg)
    if not record and not recorded_file.exists():
        return []
    if not resume or not recorded_file.exists():
        if resume:
            print(f"[posttrain] {run_path} has no {IDENTITY_FILE} (a run from before it was recorded): recording the "
                  "config it resumes with", flush=True)
        recorded_file.write_text(json.dumps(now, indent=1, default=str))
        return []
    recorded = json.loads(recorded_file.read_text())
    changes = [{"key": key, "old": recorded["config"].get(key), "new": value}
               for key, value in now["config"].items() if recorded["config"].get(key) != value]
    changes += [{"key": f"data file {name}", "old": recorded["data"].get(name), "new": digest}
                for name, digest in now["data"].items() if recorded["data"].get(name) != digest and
                name not in [c["new"] for c in changes]]
    refused = [c for c in changes if not may_change(c["key"], accepted)]
    if refused:
        shown = "\n".join(f"  {c['key']}: {_short(c['old'])} -> {_short(c['new'])}" for c in refused)
        raise ResumeMismatch(
            f"--resume would change what the run in {run_path} is:\n{shown}\nresuming continues the recorded run (its "
            "weights, optimizer, schedule and data position); start a new run in another --output-dir, or take the "
            "change on purpose with --accept-change KEY (it is recorded in config_changes.jsonl)")
    if not record:
        return changes
    with open(run_path / CHANGES_FILE, "a", encoding="utf-8") as log:
        for c in changes:
            c.update(from_step=from_step, accepted=not may_change(c["key"]))
            log.write(json.dumps(c, default=str) + "\n")
            print(f"[posttrain] resume changes {c['key']}: {_short(c['old'])} -> {_short(c['new'])} from step "
                  f"{from_step}{' (accepted)' if c['accepted'] else ''} (recorded in {CHANGES_FILE})", flush=True)
    if changes:
        recorded_file.write_text(json.dumps(now, indent=1, default=str))
    return changes


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def finished_already(run, cfg, stage: str, resume: bool, wanted_steps: int, accepted: tuple[str, ...] = ()) -> bool:
    """`--resume` on a run that is complete (said, exit 0 before any work); a change it refuses is refused first."""
    if not resume:
        return False
    check_resume(run.path, cfg, resume, run.last_saved_step() + 1, accepted, record=False)
    return run.finished(stage, wanted_steps)


def prepare_run(run, cfg, resume: bool, overwrite: bool, accepted: tuple[str, ...] = ()) -> None:
    """The output directory made ready (locked, checked; `RunDir.prepare`) and the run's identity recorded or checked."""
    run.prepare(resume, overwrite)
    check_resume(run.path, cfg, resume, run.last_saved_step() + 1, accepted)
