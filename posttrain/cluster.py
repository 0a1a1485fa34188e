"""Ray: start or join a cluster, and reserve devices for a worker group with a placement group."""

from __future__ import annotations

import os
import time

from posttrain import faults
from posttrain.config import RayConfig


class PlacementError(RuntimeError):
    """The cluster cannot hold the requested group."""


class WorkerFailure(RuntimeError):
    """A worker died and could not be (or may no longer be) replaced."""


def init_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Local Ray by default (dashboard off, or bound to localhost); `address`/RAY_ADDRESS joins a cluster."""
    import ray

    if ray.is_initialized():
        return
    address = address or cfg.address or os.environ.get("RAY_ADDRESS") or None
    # Workers import the package from the same interpreter; quiet the per-actor stdout prefixes.
    kwargs = dict(ignore_reinit_error=True, log_to_driver=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=cfg.include_dashboard, dashboard_host=cfg.dashboard_host, **kwargs)


def reserve(name: str, num_workers: int, cpus_per_worker: float, gpus_per_worker: int, strategy: str = "PACK"):
    """A placement group of one bundle per worker; fails at once when the cluster is too small."""
    import ray
    from ray.util.placement_group import placement_group

    if num_workers < 1:
        raise PlacementError(f"{name}: a group needs at least one worker, got {num_workers}")
    need = {"CPU": num_workers * cpus_per_worker, "GPU": num_workers * gpus_per_worker}
    # Ray's view of free resources lags a just-released group by a moment: look again briefly.
    deadline = time.monotonic() + 5
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        short = [k for k, amount in need.items() if amount > free.get(k, 0) + 1e-9]
        beyond_cluster = any(amount > total.get(k, 0) + 1e-9 for k, amount in need.items())
        if not short:
            break
        if beyond_cluster or time.monotonic() > deadline:
            raise PlacementError(
                f"{name}: requested {num_workers} workers x ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU) = "
                f"{need['CPU']:g} CPU, {need['GPU']:g} GPU; available now {free.get('CPU', 0):g} CPU, "
                f"{free.get('GPU', 0):g} GPU of the cluster's {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"
            )
        time.sleep(0.1)
    bundle = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    group = placement_group([dict(bundle) for _ in range(num_workers)], strategy=strategy, name="")
    ready, _ = ray.wait([group.ready()], timeout=120)
    if not ready:
        ray.util.remove_placement_group(group)
        raise PlacementError(f"{name}: could not place {num_workers} x {bundle} within 120 s "
                             f"(available now: {ray.available_resources()})")
    return group


def default_cpus_per_worker(num_workers: int) -> float:
    import ray

    return max(1, int(ray.available_resources().get("CPU", 1)) // num_workers)


def spawn(worker_cls, placement, num_cpus: float, num_gpus: float, args_for_rank, count: int | None = None,
          max_restarts: int = 0) -> list:
    """One actor of `worker_cls` per bundle of `placement` (the first `count` bundles, where given);
    `args_for_rank(i)` gives its arguments.

    With `max_restarts`, Ray restarts a dead actor in its bundle (re-running its constructor); its
    in-flight calls fail (`max_task_retries=0`) rather than being replayed on the fresh actor, so
    the group can give it the current weights first (`Restarts`).
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(worker_cls)
    extra = {"runtime_env": faults.env_for_actors()} if faults.env_for_actors() else {}
    return [
        actor.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0,
                      scheduling_strategy=PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=i),
                      **extra).remote(*args_for_rank(i))
        for i in range(placement.bundle_count if count is None else count)
    ]


def get_all(refs: list) -> list:
    """`ray.get` of several workers' calls that fails as soon as one worker dies (not when the
    others, waiting for it in a collective, time out)."""
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready[0])
    return ray.get(refs)


class Restarts:
    """Redoes the calls of a group's workers that died, on the actor Ray restarted, up to a limit.

    Ray restarts the process (`spawn(max_restarts=...)`); what Ray cannot know is the state the
    fresh actor lacks — the rollout workers' current weights — so `on_restart(worker)` restores it
    before the call is redone. The calls are deterministic in their arguments (seeded sampling,
    teacher prefill), so a redone call returns what the lost one would have: no prompt is dropped
    or drawn twice.
    """

    def __init__(self, name: str, limit: int, config_key: str, on_restart=None):
        self.name, self.limit, self.config_key, self.on_restart = name, limit, config_key, on_restart
        self.failures = 0

    def run(self, workers: list, method: str, calls: list[tuple[int, tuple]]) -> list:
        """`calls`: (worker index, arguments); the results in the same order."""
        import ray

        refs = [getattr(workers[i], method).remote(*args) for i, args in calls]
        if calls and faults.fires_on_call(f"kill_{self.name}_worker"):
            print(f"[fault] kill_{self.name}_worker: killing {self.name} worker {calls[-1][0]}", flush=True)
            ray.kill(workers[calls[-1][0]], no_restart=False)
        results = []
        for k, ref in enumerate(refs):
            while True:
                try:
                    results.append(ray.get(ref))
                    break
                except ray.exceptions.RayActorError as e:
                    index, args = calls[k]
                    self.failures += 1
                    if self.failures > self.limit:
                        raise WorkerFailure(
                            f"{self.name} worker {index} died ({type(e).__name__}); that is {self.failures} worker deaths "
                            f"in this run, more than {self.config_key}={self.limit}") from None
                    print(f"[{self.name}] WARNING: worker {index} died ({type(e).__name__}); restarted by Ray, redoing its "
                          f"{method} call ({self.failures}/{self.limit} restarts of {self.config_key})", flush=True)
                    self._wait_until_back(workers[index], index)
                    if self.on_restart is not None:
                        self.on_restart(workers[index])
                    ref = getattr(workers[index], method).remote(*args)
        return results

    def _wait_until_back(self, worker, index: int, timeout_s: float = 600) -> None:
        """Until Ray has restarted the actor (constructor done), calls to it fail as unavailable."""
        import ray

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(worker.__ray_ready__.remote())
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise WorkerFailure(f"{self.name} worker {index} did not come back within {timeout_s:.0f} s") from None
                time.sleep(0.5)
            except ray.exceptions.ActorDiedError:
                raise WorkerFailure(f"{self.name} worker {index} died and Ray could not restart it "
                                    f"({self.config_key}={self.limit})") from None


def release(workers: list, placement) -> None:
    """Kill a group's actors and free its reservation (before the next group needs the devices);
    `placement` None: the reservation is shared with other groups and stays."""
    import ray
    from ray.util.placement_group import placement_group_table, remove_placement_group

    for w in workers:
        ray.kill(w)
    if placement is None:
        return
    remove_placement_group(placement)
    # Removal is asynchronous; wait for it, so the next group's reservation sees the freed devices.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and placement_group_table(placement).get("state") != "REMOVED":
        time.sleep(0.05)
