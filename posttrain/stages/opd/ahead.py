"""One-step off-policy OPD (`rollout.async_steps: 1`): step t+1 is sampled and scored while step t trains.

On-policy, the trainer idles while the rollout samples and the teacher scores, and both idle while
the trainer steps. Here one background thread drives the rollout and teacher groups, in order:

    generate+score(t)   sync(w[t-1])   generate+score(t+1)   sync(w[t])   generate+score(t+2) ...

while the loop trains step t on the driver thread (once sync(w[t-1]) has streamed the weights out of
the trainer: training starts after `take`, which waits for it). Step t+1's samples therefore come from the
weights before step t (one step stale); the sampled-token loss's clipped importance ratio
`exp(log π_train − log π_sampler)` corrects for exactly that lag (slime's `--async` and verl's
one-step-off-policy trainer make the same trade). Every call to the rollout group goes through this
one thread, FIFO, so a weight sync can never overtake a generation or arrive out of order.

The loop does not work ahead past a step that checkpoints, evaluates or ends a teacher stage: the
step after it samples from that step's weights, as an on-policy run resumed from that checkpoint
does, which keeps resume exact and keeps evaluation and the teacher switch out of the pipeline.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from posttrain.infra.cluster import torch_threads
from posttrain.config import OPDConfig


class Ahead:
    def __init__(self, rollout, generate_and_score: Callable):
        """`generate_and_score(step, prompts, rollout, teacher, cfg)` makes one step's samples and scores."""
        self.rollout, self.generate_and_score = rollout, generate_and_score
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opd-ahead")
        self.pending: dict[int, Future] = {}
        self.synced: Future | None = None

    def prepare(self, step: int, prompts, teacher, cfg) -> None:
        """Queue step `step`'s sampling and scoring behind what is queued already (once per step)."""
        if step not in self.pending:
            self.pending[step] = self.pool.submit(self.generate_and_score, step, prompts, self.rollout, teacher, cfg)

    def take(self, step: int):
        """Step `step`'s samples and scores (waits for them; re-raises what went wrong making them), once
        the weight sync queued behind them has read the trainer's weights: training may change them now."""
        got = self.pending.pop(step).result()
        if self.synced is not None:
            self.synced.result()
        return got

    def sync(self, update_weights: Callable[[], object]) -> None:
        """Queue a weight sync (`update_weights()`: the trainer streams its weights into the rollout
        workers) behind the generation in flight; the next `take` waits for it, so it streams exactly
        the weights of the step just trained, with no copy of them held meanwhile."""
        if self.synced is not None:
            self.synced.result()  # the previous sync: done, or raises
        self.synced = self.pool.submit(update_weights)

    def drain(self) -> None:
        """Wait until everything queued is done: the rollout workers hold the newest weights, nothing runs."""
        for step in sorted(self.pending):
            self.pending[step].result()
        if self.synced is not None:
            self.synced.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def oversubscription(cfg: OPDConfig, cores: int) -> str | None:
    """A warning when working ahead on a CPU-only machine would run more torch threads than `cores`:
    the trainer's and the rollout's (or teacher's) threads run at once here, and oversubscribed
    threads wait on each other (on 2 cores, two threads each measured 0.6x the on-policy speed)."""
    if not cfg.rollout.async_steps or cfg.trainer.gpus_per_worker:
        return None

    def threads(group) -> int:  # the trainer's cpus_per_worker may be unset (Ray's share, decided at start)
        return torch_threads(group.threads_per_worker, group.cpus_per_worker or 1)

    trainer = threads(cfg.trainer) * cfg.trainer.num_workers
    beside = max(threads(cfg.rollout) * cfg.rollout.num_workers, threads(cfg.teacher) * cfg.teacher.num_workers)
    if trainer + beside <= cores:
        return None
    return (f"[opd] WARNING: rollout.async_steps runs the rollout and teacher beside the trainer: {trainer} + {beside} "
            f"torch threads on {cores} cores; lower trainer/rollout/teacher.threads_per_worker so they fit "
            f"(docs/performance.md)")
