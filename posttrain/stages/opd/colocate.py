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
(use ZeRO-Offload to move its optimizer state off the device). Which engine is awake when is one rule,
`DeviceTurns`: before an engine group wakes or starts, the awake one sleeps and the trainer empties its
CUDA cache.
"""

from __future__ import annotations

from posttrain.config import OPDConfig
from posttrain.engines.group import DeviceTurns
from posttrain.infra.cluster import Share, default_cpus_per_worker, release, reserve


class Colocation:
    """One placement group for the three groups; `trainer`, `rollout` and `teacher` are each group's share."""

    def __init__(self, cfg: OPDConfig):
        n = cfg.trainer.num_workers  # rollout/teacher.num_workers <= n: checked with the config
        side = cfg.rollout.cpus_per_worker + cfg.teacher.cpus_per_worker
        trainer_cpus = cfg.trainer.cpus_per_worker or max(1.0, default_cpus_per_worker(n) - side)
        gpus = cfg.trainer.gpus_per_worker
        self.placement = reserve("colocated trainer+rollout+teacher", n, trainer_cpus + side, gpus, cfg.trainer.placement)
        # A third of the device each: Ray accounting only; the groups take turns on it by sleeping
        # (posttrain.engines.group.EngineGroup.working).
        self.turns = DeviceTurns()  # which engine group is awake (posttrain.engines.group.DeviceTurns)
        self.trainer = Share(self.placement, trainer_cpus, gpus / 3)
        self.rollout = Share(self.placement, cfg.rollout.cpus_per_worker, gpus / 3, self.turns)
        self.teacher = Share(self.placement, cfg.teacher.cpus_per_worker, gpus / 3, self.turns)

    def release(self) -> None:
        release([], self.placement)
