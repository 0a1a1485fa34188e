"""What every stage's driver does the same way, whatever it trains: the run directory and its
checkpoints, the tokenizer, the non-finite policy, the checkpoint schedule, and starting Ray.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from posttrain.config import ClusterConfig, ModelConfig, RayConfig, TrainerConfig, to_dict
from posttrain.infra import checkpoint
from posttrain.infra import run_lock
from posttrain.infra.cluster import check_nodes, init_ray
from posttrain.models.chat_format import adopt_chat_format
from posttrain.models.locate import check_model_dir
from posttrain.models.tiny import ensure_model


class RunDirError(RuntimeError):
    """The output directory cannot take this run: it holds another, holds nothing to resume, or is not a writable directory."""


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def holds_run(out: Path) -> bool:
    """Whether `out` holds a run: something to resume (a complete checkpoint) or a finished export.

    A start that failed before its first checkpoint (bad input found late, a placement Ray could not
    give, a kill during start-up) leaves config.yaml, metrics.jsonl or an empty checkpoints/ behind:
    not a run, so the corrected command may use the directory.
    """
    return bool(checkpoint.complete_checkpoints(out / "checkpoints")) or (out / "final").is_dir()


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output directory {out} is a file, not a directory; give --output-dir a directory")
    if resume and not holds_run(out):
        what = "does not exist" if not out.exists() else f"holds no complete checkpoint under {out / 'checkpoints'}"
        raise RunDirError(f"--resume: nothing to resume: {out} {what}; check the path, or leave out --resume to start a run")
    if holds_run(out) and not (resume or overwrite):
        raise RunDirError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # what a checkpoint write needs, found now rather than after the data work
        run_lock.acquire(out)  # one writer: taken before anything in the directory is touched
    except run_lock.LockHeld as e:
        raise RunDirError(str(e)) from None
    except OSError as e:
        raise RunDirError(f"output directory {out} is not writable ({e.strerror or e}); give --output-dir a directory "
                          "you can write to") from None
    if overwrite:
        for child in out.iterdir():  # everything but the lock this run now holds
            if child.name != run_lock.LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def releases_output_dir(stage):
    """A stage function whose output directory's lock (taken by `RunDir.prepare`) is released however it ends."""
    @functools.wraps(stage)
    def run(cfg, *args, **kwargs):
        try:
            return stage(cfg, *args, **kwargs)
        finally:
            run_lock.release(Path(cfg.output_dir) / run_lock.LOCK_NAME)
    return run


class RunDir:
    """A stage's output directory: its config and reports, `placement.json`, and `checkpoints/`."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir)
        self.checkpoints = self.path / "checkpoints"

    def prepare(self, resume: bool, overwrite: bool) -> None:
        prepare_output_dir(self.path, resume, overwrite)

    def finished(self, stage: str, wanted_steps: int = 0) -> bool:
        """Whether the run here is complete (and then says so): final/ exported after its newest checkpoint,
        the run's last step (a checkpoint without `total_steps` in its state: final/ alone), and as many steps as
        the command asks (`wanted_steps` > 0: a longer run, e.g. trainer.max_steps raised on --resume, goes on)."""
        found = checkpoint.complete_checkpoints(self.checkpoints)
        if not (self.path / "final").is_dir() or not found:
            return False
        state = json.loads((found[-1][1] / checkpoint.STATE_FILE).read_text())
        if state.get("total_steps", state["step"]) != state["step"] or wanted_steps > state["step"]:
            return False
        print(f"[{stage}] run complete: {self.path} finished all {state['step']} steps (model: {self.path / 'final'}); "
              "nothing to resume", flush=True)
        return True

    def write_yaml(self, name: str, obj) -> None:
        (self.path / name).write_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))

    def write_config(self, cfg) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def write_placement(self, groups: dict) -> None:
        """`placement.json`: the node each worker of each group runs on (Ray node ids)."""
        (self.path / "placement.json").write_text(json.dumps(groups, indent=2))

    def resume_point(self, resume: bool, verify_checksums: bool) -> tuple[Path, dict] | None:
        """The checkpoint to continue from (with --resume), after clearing a write that a kill cut short."""
        checkpoint.prepare_checkpoint_root(self.checkpoints)
        return checkpoint.latest_checkpoint(self.checkpoints, verify_checksums) if resume else None

    def save(self, write_files: Callable[[str], None], state: dict, keep: int) -> Path:
        path = checkpoint.save(write_files, self.checkpoints, state["step"], state, keep=keep)
        print(f"[checkpoint] step {state['step']} saved: {path}", flush=True)
        return path

    def checkpoint_of(self, step: int) -> Path:
        return self.checkpoints / checkpoint.step_name(step)

    def resume_hint(self) -> str:
        found = checkpoint.complete_checkpoints(self.checkpoints)
        return (f"--resume continues from the last complete checkpoint {found[-1][1]}" if found
                else "no checkpoint was written yet: the run starts afresh")

    def last_saved_step(self) -> int:
        found = checkpoint.complete_checkpoints(self.checkpoints)
        return found[-1][0] if found else 0


@dataclass
class Schedule:
    """When a step checkpoints, evaluates, stops — and, one step off-policy, drains the pipeline."""

    total_steps: int
    checkpoint_every: int
    stop_after_step: int = 0  # 0: run to the end
    eval_every: int = 0  # 0: never
    stage_ends: frozenset[int] = frozenset()  # the last step of each cascade stage

    def stops(self, step: int) -> bool:
        return step == self.stop_after_step

    def saves(self, step: int, nonfinite: bool = False) -> bool:
        return (step % self.checkpoint_every == 0 or step == self.total_steps or self.stops(step) or nonfinite
                or step in self.stage_ends)

    def evaluates(self, step: int) -> bool:
        """Every `eval_every` steps, and at the end of each cascade stage and of the run (what each teacher achieved)."""
        return self.eval_every > 0 and (step % self.eval_every == 0 or step == self.total_steps or step in self.stage_ends)

    def drains(self, step: int) -> bool:
        """Whether the step after `step` must sample from `step`'s own weights (no working ahead past it):
        a step that checkpoints (so that resuming from it is exact), evaluates, or ends a stage or the run."""
        return self.saves(step) or self.evaluates(step)


class NonFinite:
    """A step with a non-finite loss or gradient is skipped (by the trainer) and counted here, in the
    run state that checkpoints carry, so a resume keeps counting; too many in a row stop the run."""

    def __init__(self, trainer: TrainerConfig):
        self.limit = trainer.max_nonfinite_in_a_row

    @staticmethod
    def note(state: dict, skipped: bool) -> dict:
        state["skipped_steps"] = state.get("skipped_steps", 0) + int(skipped)
        state["nonfinite_in_a_row"] = state.get("nonfinite_in_a_row", 0) + 1 if skipped else 0
        return {"skipped": skipped, "skipped_steps": state["skipped_steps"]}

    def too_many(self, state: dict) -> bool:
        return 0 < self.limit <= state.get("nonfinite_in_a_row", 0)

    def error(self, state: dict, run: RunDir) -> NonFiniteError:
        return NonFiniteError(
            f"steps {state['step'] - state['nonfinite_in_a_row'] + 1}..{state['step']} all had a non-finite loss or "
            f"gradient and were skipped (trainer.max_nonfinite_in_a_row={self.limit}); stopped with checkpoint "
            f"{run.checkpoint_of(state['step'])}: lower optim.lr or check the data, then --resume")


def load_tokenizer(model: ModelConfig):
    """The model's tokenizer (building the tiny suite first where the config points into it), in the chat format
    of `model.chat_template_from` where that is set (the SFT stage trains and exports in it)."""
    ensure_model(model.path, model.build_tiny_if_missing, model.tiny_seed)
    tokenizer = check_model_dir(model.path, "model.path", model.trust_remote_code,
                                need_template=not model.chat_template_from)
    if model.chat_template_from:
        tokenizer = adopt_chat_format(tokenizer, model.chat_template_from, model.trust_remote_code)
    return tokenizer


def start_ray(ray: RayConfig, cluster: ClusterConfig, address: str | None) -> None:
    init_ray(ray, address)
    check_nodes(cluster.nodes)
