"""The OPD stage's three worker groups: the trainer, the rollout engines, and the active teacher.

The teacher group is made per cascade stage: at a switch the old teacher's workers are released
before the next teacher loads. With `rollout.colocate` the three share the trainer's devices
(posttrain.stages.opd.colocate); with `rollout.async_steps: 1` the rollout and teacher work one step
ahead of the trainer (posttrain.stages.opd.ahead).
"""

from __future__ import annotations

import os
import time

from posttrain.config import OPDConfig
from posttrain.eval.run import task_accuracy
from posttrain.eval.tasks import TaskExample
from posttrain.engines.group import RolloutGroup, TeacherGroup
from posttrain.engines.sizing import resume_caveat, rollout_size, teacher_size
from posttrain.infra.closing import Closing
from posttrain.infra.cluster import placement_nodes
from posttrain.stages.driver import RunDir
from posttrain.stages.opd.ahead import Ahead, oversubscription
from posttrain.stages.opd.colocate import Colocation
from posttrain.stages.opd.step import generate_and_score
from posttrain.train.group import TrainerGroup
from posttrain.train.weight_stream import SyncStats


class OPDWorkers(Closing):
    def __init__(self, cfg: OPDConfig, total_steps: int, pad_id: int):
        self.cfg = cfg
        self.colocation = Colocation(cfg) if cfg.rollout.colocate else None
        share = self.colocation
        self.trainer, self.rollout, self.teacher, self.teacher_index, self.ahead = None, None, None, None, None
        try:
            self.trainer = TrainerGroup(cfg.model, cfg.trainer, cfg.optim, cfg.deepspeed, total_steps, pad_id=pad_id,
                                        lora=cfg.lora, share=share and share.trainer)
            if share is not None:  # before an engine wakes or starts, the trainer's cached blocks go back
                share.turns.free_trainer_cache = self.trainer.free_device_cache
            self.rollout = RolloutGroup(cfg.model.path, cfg.rollout, cfg.model.trust_remote_code,
                                        share=share and share.rollout, size=rollout_size(cfg))
        except BaseException:
            self.close()  # a failed start must not keep its devices reserved
            raise
        # Every weight sync streams from the trainer into the rollout workers (a worker that Ray restarted
        # too, before its work is redone).
        self.rollout.sender = self.send_weights
        if cfg.rollout.async_steps:  # the next step is sampled and scored while this one trains
            self.ahead = Ahead(self.rollout, generate_and_score)
            if warning := oversubscription(cfg, os.cpu_count() or 1):
                print(warning, flush=True)

    def send_weights(self, receivers: list, nodes: list[str]) -> SyncStats:
        rollout = self.cfg.rollout
        return self.trainer.send_weights(receivers, nodes, rollout.sync_bucket_mb, rollout.weight_transfer,
                                         rollout_size(self.cfg).tensor_parallel)

    def placement_record(self) -> dict:
        colocated = self.colocation is not None
        placement = self.colocation.placement if colocated else self.rollout.placement
        return {"trainer": self.trainer.placement_record(),
                "rollout": {"strategy": self.cfg.rollout.placement, "colocated": colocated,
                            "bundle_nodes": placement_nodes(placement)}}

    def teacher_for(self, index: int) -> TeacherGroup:
        """Cascade stage `index`'s teacher group (the previous one's devices are freed first)."""
        if index != self.teacher_index:
            if self.teacher is not None:
                self.teacher.close()
            stage = self.cfg.teachers[index]
            self.teacher = TeacherGroup(stage.path, self.cfg.teacher, self.cfg.model.trust_remote_code,
                                        share=self.colocation and self.colocation.teacher,
                                        size=teacher_size(self.cfg), backend_name=stage.backend)
            self.teacher_index = index
        return self.teacher

    def resume(self, run: RunDir, checkpoint_dir, state: dict) -> None:
        """The trainer from its checkpoint, and the rollout engines synced to it."""
        self.trainer.load_checkpoint(str(run.checkpoints), checkpoint_dir.name)
        self.rollout.update_weights()
        print(f"[opd] resumed from {checkpoint_dir} (step {state['step']}, teacher {state['cascade_index'] + 1}, "
              f"{state['cursor']} prompts consumed)", flush=True)
        if caveat := resume_caveat(self.cfg):
            print(f"[opd] note: {caveat}", flush=True)

    def save(self, run: RunDir, state: dict) -> None:
        run.save(lambda tag: self.trainer.save_checkpoint(str(run.checkpoints), tag), state, keep=self.cfg.checkpoint.keep)

    def save_after_failure(self, run: RunDir, state: dict) -> None:
        """Rollout or teacher workers gone past their restarts: the trainer still holds the weights of
        the last finished step, so seal them; a dead trainer rank cannot be saved."""
        if not self.trainer.broken and state["step"] > 0 and run.last_saved_step() < state["step"]:
            self.save(run, state)

    def evaluate(self, tokenizer, examples: list[TaskExample], seed: int) -> dict:
        """Greedy task accuracy of the rollout workers' weights (the trainer's, after the sync)."""
        if self.ahead:
            self.ahead.drain()  # the rollout workers hold this step's weights; nothing else runs
        started = time.perf_counter()
        result = task_accuracy(self.rollout.generate, tokenizer, examples, seed)
        metrics = {f"eval/{task}": r["accuracy"] for task, r in result.items()}
        metrics.update({f"eval/{task}_len": r["response_len"] for task, r in result.items()})
        metrics["eval_s"] = time.perf_counter() - started
        return metrics

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()
        for group in (self.teacher, self.rollout, self.trainer):
            if group is not None:
                group.close()
        if self.colocation is not None:
            self.colocation.release()
