"""Ray: start or join a cluster, and reserve devices for a worker group with a placement group."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from posttrain.config import RayConfig
from posttrain.infra import faults, reaper


class PlacementError(RuntimeError):
    """The cluster cannot hold the requested group."""


class WorkerFailure(RuntimeError):
    """A worker died and could not be (or may no longer be) replaced."""


@dataclass
class Share:
    """Where one group's actors go when it shares bundles reserved for several groups (colocated OPD,
    `posttrain.stages.opd.colocate`), and what each asks of its bundle."""

    placement: Any
    cpus: float
    gpus: float
    turns: Any = None  # the groups' `posttrain.engines.group.DeviceTurns`: which engine group holds the devices


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
        _watchers.append(reaper.watch(_local_ray_processes()))


_watchers: list = []  # the reaper pipes: held open for as long as this driver lives


@contextmanager
def ray_left_on_exit():
    """Leave Ray at the end of the block if it was not up at its start (stopping the local Ray started
    within; only disconnecting from a cluster), so nothing its processes print (a raylet's disk-space
    warning every 10 s, say) lands after what the caller prints next: a stopped run's resume command
    must be the last thing its user reads. Ray would do the same at exit, after that line. A Ray that
    was already up (a caller's own, a test session's) is the caller's to leave."""
    import ray

    up_before = ray.is_initialized()
    try:
        yield
    finally:
        if not up_before and ray.is_initialized():
            ray.shutdown()


def _local_ray_processes() -> list:
    """The processes this driver's `ray.init` started (GCS, raylet and its agents, dashboard, monitors)."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "ray" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def reserve(name: str, num_workers: int, cpus_per_worker: float, gpus_per_worker: int, strategy: str = "PACK"):
    """A placement group of one bundle per worker, placed by `strategy` (PACK, SPREAD, STRICT_PACK,
    STRICT_SPREAD). A request the cluster can never hold fails at once, with the numbers; one it
    could hold but is busy now is given a few seconds (a group just released frees its devices late).
    """
    import ray
    from ray.util.placement_group import placement_group

    if num_workers < 1:
        raise PlacementError(f"{name}: a group needs at least one worker, got {num_workers}")
    if cpus_per_worker <= 0 and gpus_per_worker <= 0:
        raise PlacementError(f"{name}: a worker needs some CPU or GPU, got {cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU")
    bundle = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    need = {"CPU": num_workers * cpus_per_worker, "GPU": num_workers * gpus_per_worker}
    request = (f"{name}: requested {num_workers} workers x ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU) = "
               f"{need['CPU']:g} CPU, {need['GPU']:g} GPU ({strategy})")
    # Impossible whatever else runs: the cluster's (alive nodes') totals cannot hold it.
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = _never_fits(bundle, num_workers, strategy, nodes)
    if problem:
        raise PlacementError(f"{request}; {problem}; the cluster has {_describe_nodes(nodes)}")
    # Possible, but maybe not now: Ray's view of free resources lags a just-released group by a moment.
    deadline = time.monotonic() + 5
    while True:
        free = ray.available_resources()
        if all(amount <= free.get(k, 0) + 1e-9 for k, amount in need.items()):
            break
        if time.monotonic() > deadline:
            raise PlacementError(f"{request}; available now {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU "
                                 f"(the rest is held by other groups or jobs) of {_describe_nodes(nodes)}")
        time.sleep(0.1)
    group = placement_group([dict(bundle) for _ in range(num_workers)], strategy=strategy, name="")
    ready, _ = ray.wait([group.ready()], timeout=120)
    if not ready:
        ray.util.remove_placement_group(group)
        raise PlacementError(f"{request}; could not be placed within 120 s (available now: {ray.available_resources()})")
    return group


def _never_fits(bundle: dict, count: int, strategy: str, nodes: list[dict]) -> str:
    """Why `count` bundles can never be placed on these nodes (by their total resources), or ''."""
    def fits(node: dict, k: int) -> bool:
        return all(k * amount <= node.get(key, 0) + 1e-9 for key, amount in bundle.items())

    def capacity(node: dict) -> int:  # how many bundles one node can hold
        per = [node.get(key, 0) / amount for key, amount in bundle.items() if amount > 0]
        return int(min(per) + 1e-9) if per else 0

    total = {key: sum(n.get(key, 0) for n in nodes) for key in bundle}
    short = [f"{count * amount:g} {key} > {total[key]:g}" for key, amount in bundle.items()
             if count * amount > total[key] + 1e-9]
    if short:
        return "more than the whole cluster has (" + ", ".join(short) + ")"
    if strategy == "STRICT_SPREAD" and sum(fits(n, 1) for n in nodes) < count:
        return f"STRICT_SPREAD needs {count} distinct nodes that each hold one bundle {bundle}, " \
               f"found {sum(fits(n, 1) for n in nodes)}"
    if strategy == "STRICT_PACK" and not any(fits(n, count) for n in nodes):
        return f"STRICT_PACK needs one node that holds all {count} bundles {bundle}"
    if sum(capacity(n) for n in nodes) < count:
        return f"a bundle {bundle} cannot be split across nodes, and the nodes hold {sum(capacity(n) for n in nodes)} of them"
    return ""


def _describe_nodes(nodes: list[dict]) -> str:
    cpus, gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
    per_node = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes[:8])
    more = f", ... ({len(nodes) - 8} more)" if len(nodes) > 8 else ""
    return f"{cpus:g} CPU, {gpus:g} GPU on {len(nodes)} node(s) [{per_node}{more}]"


def check_nodes(expected: int) -> None:
    """Stop at once when the config expects more nodes than the cluster has alive (0: no check)."""
    import ray

    if expected <= 0:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < expected:
        raise PlacementError(f"cluster.nodes: the config expects {expected} nodes, the Ray cluster has "
                             f"{_describe_nodes(nodes)}; start the missing nodes or set cluster.nodes")


def placement_nodes(placement) -> list[str]:
    """The node id each bundle of a placement group landed on, in bundle order (from Ray's table)."""
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(placement).get("bundles_to_node_id", {})
    return [table.get(i, "") for i in range(placement.bundle_count)]


def torch_threads(threads_per_worker: int, cpus: float) -> int:
    """A worker's torch threads: `threads_per_worker` where set, else its logical CPU share (at least 1)."""
    return threads_per_worker or max(1, int(cpus))


def default_cpus_per_worker(num_workers: int) -> float:
    import ray

    return max(1, int(ray.available_resources().get("CPU", 1)) // num_workers)


# Ray >= 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor given no GPU (ray-project/ray#54868): a worker
# configured for the CPU (`gpus_per_worker: 0`) would see every GPU of its node and pick cuda:0 unreserved (vLLM
# starting there, two trainer ranks meeting NCCL's "Duplicate GPU detected"). Ray's own switch restores hiding.
HIDE_UNASSIGNED_GPUS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}


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
    env_vars = {**HIDE_UNASSIGNED_GPUS, **faults.env_for_actors().get("env_vars", {})}
    return [
        actor.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0,
                      scheduling_strategy=PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=i),
                      runtime_env={"env_vars": env_vars}).remote(*args_for_rank(i))
        for i in range(placement.bundle_count if count is None else count)
    ]


def call_all(workers: list, method: str, *args) -> list:
    """`method(*args)` on every worker of a group at once; their results in worker order."""
    import ray

    return ray.get([getattr(w, method).remote(*args) for w in workers])


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
