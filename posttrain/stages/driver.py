"""What every stage's driver does the same way, whatever it trains: the run directory and its
checkpoints, the tokenizer, the non-finite policy, the checkpoint schedule, and starting Ray.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from posttrain.config import ClusterConfig, ConfigError, ModelConfig, RayConfig, TrainerConfig, to_dict
from posttrain.infra import checkpoint
from posttrain.infra.cluster import check_nodes, init_ray
from posttrain.models.locate import require_model
from posttrain.models.tiny import ensure_model


class RunDirError(RuntimeError):
    """The output directory holds another run."""


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def holds_run(out: Path) -> bool:
    return (out / "metrics.jsonl").exists() or (out / "checkpoints").exists()


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if holds_run(out) and not (resume or overwrite):
        raise RunDirError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


class RunDir:
    """A stage's output directory: its config and reports, `placement.json`, and `checkpoints/`."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir)
        self.checkpoints = self.path / "checkpoints"

    def prepare(self, resume: bool, overwrite: bool) -> None:
        prepare_output_dir(self.path, resume, overwrite)

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
        return checkpoint.save(write_files, self.checkpoints, state["step"], state, keep=keep)

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
        return self.eval_every > 0 and (step % self.eval_every == 0 or step == self.total_steps)

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
    """The model's tokenizer (building the tiny suite first where the config points into it), checked
    against the model's embedding."""
    from transformers import AutoConfig, AutoTokenizer

    ensure_model(model.path, model.build_tiny_if_missing, model.tiny_seed)
    require_model(model.path, "model.path")
    tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    config = AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    check_vocabulary(model.path, len(tokenizer), config.get_text_config().vocab_size)
    return tokenizer


def check_vocabulary(path: str, tokens: int, rows: int) -> None:
    """A tokenizer with more tokens than the embedding has rows would index past it: refused. Fewer is
    legal — embeddings are padded past their tokenizer (Qwen3: 151,669 tokens, 151,936 rows) — but a
    tokenizer that reaches under 90% of the rows is probably not the model's own: one line says so."""
    if tokens > rows:
        raise ConfigError(f"model.path {path}: its tokenizer has {tokens:,} tokens but the model's embedding only "
                          f"{rows:,} rows; token ids {rows:,}..{tokens - 1:,} would index past it (a tokenizer of another model?)")
    if tokens < 0.9 * rows:
        print(f"[posttrain] note: model.path {path}: the tokenizer has {tokens:,} tokens, the embedding {rows:,} rows; "
              f"rows {tokens:,}.. are padding no text produces (the model can still sample them)", flush=True)


def start_ray(ray: RayConfig, cluster: ClusterConfig, address: str | None) -> None:
    init_ray(ray, address)
    check_nodes(cluster.nodes)
