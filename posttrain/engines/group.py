"""Engine groups: the rollout's and a teacher's Ray actors, started, slept, restarted and shut down alike.

`EngineGroup` reserves a placement group (or takes a share of the trainer's bundles when colocated),
spawns one actor of its backend's worker class per bundle, and runs every call through `Restarts`:
a worker that dies is restarted by Ray and its call redone. Colocated, a group is awake only while
it works. `RolloutGroup` adds sampling and the weight sync; `TeacherGroup` scoring.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from posttrain.config import RolloutConfig, TeacherConfig
from posttrain.engines.backends import backend
from posttrain.engines.batching import shard
from posttrain.engines.sizing import EngineSize
from posttrain.engines.types import Sample, Scores
from posttrain.infra import faults
from posttrain.infra.closing import Closing
from posttrain.infra.cluster import Restarts, Share, call_all, release, reserve, spawn, torch_threads


class DeviceTurns:
    """Colocated groups share devices: one rule for who holds them. Before an engine group wakes or starts,
    the group awake goes to sleep and the trainer hands back its cached blocks, so an engine never starts or
    wakes beside another awake engine (vLLM's start-up check reads the free memory and fails) or beside
    torch's cache. The rollout stays awake from a weight sync to its sampling unless a teacher needs the
    device in between (the first step, a cascade switch)."""

    def __init__(self):
        self.awake = None
        self.free_trainer_cache: Callable[[], None] = lambda: None  # set once the trainer exists

    def take(self, group: "EngineGroup") -> None:
        if self.awake is not None and self.awake is not group and not self.awake.asleep:
            self.awake.sleep()
        self.free_trainer_cache()
        self.awake = group


class EngineGroup(Closing):
    def __init__(self, role: str, worker_cls: type, model_path: str, cfg, trust_remote_code: bool,
                 share: Share | None, size: EngineSize | None):
        """`share`: bundles shared with the trainer (`posttrain.stages.opd.colocate`); the engines can sleep."""
        self.role, self.worker_cls, self.cfg = role, worker_cls, cfg
        self.model_path, self.trust_remote_code = model_path, trust_remote_code
        self.colocated, self.asleep = share is not None, False
        self.turns = share.turns if share is not None else None
        if self.turns is not None:
            self.turns.take(self)  # it loads onto the shared devices now
        if share is None:
            cpus, gpus = cfg.cpus_per_worker, cfg.gpus_per_worker
            self.placement = reserve(role, cfg.num_workers, cpus, gpus, cfg.placement)
        else:
            cpus, gpus, self.placement = share.cpus, share.gpus, None  # not this group's to release
        self.workers = spawn(worker_cls, share.placement if share else self.placement, cpus, gpus,
                             lambda i: (model_path, cfg, torch_threads(cfg.threads_per_worker, cpus), trust_remote_code,
                                        share is not None, size or EngineSize()),
                             count=cfg.num_workers, max_restarts=cfg.max_restarts)
        self.restarts = Restarts(role, cfg.max_restarts, f"{role}.max_restarts", on_restart=self.on_restart)

    def on_restart(self, worker) -> None:
        """Give a worker that Ray restarted the state its constructor does not rebuild (none here)."""

    def padding(self, prompt_lens: list[int], response_lens: list[int]) -> dict[str, float]:
        """`{role}_pad_frac` of this step's batches, as the backend reports it (nothing where it does not pad)."""
        frac = self.worker_cls.padding(self.cfg, self.model_path, self.trust_remote_code, prompt_lens, response_lens)
        return {} if frac is None else {f"{self.role}_pad_frac": frac}

    @contextlib.contextmanager
    def working(self, sleep_after: bool = True):
        """Colocated: wake for the call, and sleep after it (the trainer and the other group use the device)."""
        if self.colocated and self.asleep:
            self.wake_up()
        try:
            yield
        finally:
            if self.colocated and sleep_after:
                self.sleep()

    def sleep(self) -> None:
        call_all(self.workers, "sleep")
        self.asleep = True

    def wake_up(self) -> None:
        if self.turns is not None:
            self.turns.take(self)
        call_all(self.workers, "wake_up")
        self.asleep = False

    def close(self) -> None:
        """Free the workers and their devices; a backend with a `close` (vLLM: shut the engine down, and its
        shared-memory queues with it) gets to run it first."""
        if hasattr(self.worker_cls, "close"):
            import ray

            with contextlib.suppress(ray.exceptions.RayError):
                ray.get([w.close.remote() for w in self.workers], timeout=60)
        release(self.workers, self.placement)


class RolloutGroup(EngineGroup):
    def __init__(self, model_path: str, cfg: RolloutConfig, trust_remote_code: bool = False, share: Share | None = None,
                 size: EngineSize | None = None):
        super().__init__("rollout", backend(cfg.backend, "rollout.backend").rollout, model_path, cfg,
                         trust_remote_code, share, size)
        # How the current student weights reach workers: `send(workers, nodes)` streams them in (the OPD
        # loop sets it to the trainer's `send_weights`); a restarted worker gets them too. None: the
        # initial weights its constructor loads.
        self.sender: Callable[[list, list[str]], object] | None = None

    def on_restart(self, worker) -> None:
        if self.sender is not None:  # nccl: one group spans every engine, so a new one is opened for all of them
            self.update_weights(None if self.cfg.weight_transfer == "nccl" else [worker])

    def generate(self, prompt_ids: list[list[int]], seed: int, greedy: bool = False) -> list[Sample]:
        """`samples_per_prompt` samples of each prompt (`greedy`: one argmax response), grouped by prompt."""
        shards = shard(list(enumerate(prompt_ids)), len(self.workers))
        with self.working():  # colocated: asleep from the end of sampling until the next weight sync
            results = self.restarts.run(self.workers, "generate",
                                        [(i, (part, seed * 1000 + i, greedy)) for i, part in enumerate(shards) if part])
        samples = [s for part in results for s in part]
        return sorted(samples, key=lambda s: s.prompt_index)  # stable: samples of a prompt keep their order

    def update_weights(self, workers: list | None = None):
        """The sender streams the current weights into every worker (or `workers`), one bucket at a time."""
        workers = self.workers if workers is None else workers
        if faults.fires_on_call("stale_rollout"):  # the test fault: this sync does not happen (posttrain check)
            return None
        with self.working(sleep_after=False):  # awake now: sampling comes next
            return self.sender(workers, call_all(workers, "node_id"))


class TeacherGroup(EngineGroup):
    def __init__(self, model_path: str, cfg: TeacherConfig, trust_remote_code: bool = False, share: Share | None = None,
                 size: EngineSize | None = None, backend_name: str = ""):
        # A restarted teacher reloads its (fixed) weights in its constructor: nothing to restore.
        # `backend_name`: the cascade stage's own backend, where it sets one (else teacher.backend).
        name, key = (backend_name, "teachers[].backend") if backend_name else (cfg.backend, "teacher.backend")
        super().__init__("teacher", backend(name, key).teacher, model_path, cfg, trust_remote_code, share, size)
        if self.colocated:
            self.sleep()  # loaded on the device only while it scores

    def score(self, sequences: list[tuple[list[int], list[int]]], topk: int = 0) -> list[Scores]:
        n = len(self.workers)
        with self.working():
            parts = self.restarts.run(self.workers, "score", [(i, (part, topk)) for i, part in enumerate(shard(sequences, n))
                                                              if part])
        results: list[Scores] = [None] * len(sequences)  # type: ignore[list-item]
        for i, part in enumerate(parts):
            results[i::n] = part
        return results
