"""Colocated OPD (`rollout.colocate: true`): trainer, rollout and teacher share the trainer's devices.

Design: one placement group of `trainer.num_workers` bundles, each holding one device and the CPUs
of all three groups; trainer rank i, rollout worker i and teacher worker i are separate Ray actors
in bundle i, each asking for a third of its GPU (so Ray gives all three the same device), as verl
and slime colocate. Separate actors rather than the rollout inside the trainer actor keep every
group's code unchanged (the same workers run disaggregated) and keep a vLLM engine out of the
torch.distributed process of a DeepSpeed rank.

Memory is handed over by sleeping: the step runs generate → score → train → sync one phase at a
time, and a group that is not working sleeps (vLLM sleep mode level 1: weights to host memory, KV
cache freed; hf: weights to host memory). The rollout sleeps from the end of its sampling until the
weight sync wakes it; the teacher is awake only while it scores. The trainer itself stays resident
(use ZeRO-Offload to move its optimizer state off the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posttrain.config import OPDConfig


@dataclass
class Share:
    """Where one group's actors go in the shared bundles, and what each asks of its bundle."""

    placement: Any
    cpus: float
    gpus: float


class Colocation:
    def __init__(self, cfg: OPDConfig):
        from posttrain.cluster import default_cpus_per_worker, reserve

        n = cfg.trainer.num_workers  # rollout/teacher.num_workers <= n: checked with the config
        side = cfg.rollout.cpus_per_worker + cfg.teacher.cpus_per_worker
        trainer_cpus = cfg.trainer.cpus_per_worker or max(1.0, default_cpus_per_worker(n) - side)
        gpus = cfg.trainer.gpus_per_worker
        self.placement = reserve("colocated trainer+rollout+teacher", n, trainer_cpus + side, gpus, cfg.trainer.placement)
        # A third of the device each: Ray accounting only; the groups take turns on it by sleeping.
        self.trainer = Share(self.placement, trainer_cpus, gpus / 3)
        self.rollout = Share(self.placement, cfg.rollout.cpus_per_worker, gpus / 3)
        self.teacher = Share(self.placement, cfg.teacher.cpus_per_worker, gpus / 3)

    def release(self) -> None:
        from posttrain.cluster import release

        release([], self.placement)


class SleepingRollout:
    """A colocated RolloutGroup: asleep from the end of sampling until the next weight sync."""

    def __init__(self, group):
        self.group, self.asleep = group, False

    def generate(self, prompt_ids, seed: int, greedy: bool = False):
        if self.asleep:
            self.group.wake_up()
            self.asleep = False
        try:
            return self.group.generate(prompt_ids, seed, greedy)
        finally:
            self.group.sleep()  # the teacher scores and the trainer steps next
            self.asleep = True

    def update_weights(self, bucket_refs: list) -> None:
        if self.asleep:
            self.group.wake_up()
            self.asleep = False
        self.group.update_weights(bucket_refs)  # awake now: sampling comes next

    def shutdown(self) -> None:
        self.group.shutdown()


class SleepingTeacher:
    """A colocated TeacherGroup: loaded on the device only while it scores."""

    def __init__(self, group):
        self.group, self.packed = group, group.packed
        group.sleep()

    def score(self, sequences, topk: int = 0):
        self.group.wake_up()
        try:
            return self.group.score(sequences, topk)
        finally:
            self.group.sleep()

    def shutdown(self) -> None:
        self.group.shutdown()
