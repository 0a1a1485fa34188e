"""Ray: start or join a cluster, and reserve devices for a worker group with a placement group."""

from __future__ import annotations

import os
import time

from posttrain.config import RayConfig


class PlacementError(RuntimeError):
    """The cluster cannot hold the requested group."""


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


def spawn(worker_cls, placement, num_cpus: float, num_gpus: float, args_for_rank, count: int | None = None) -> list:
    """One actor of `worker_cls` per bundle of `placement` (the first `count` bundles, where given);
    `args_for_rank(i)` gives its arguments."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(worker_cls)
    return [
        actor.options(num_cpus=num_cpus, num_gpus=num_gpus,
                      scheduling_strategy=PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=i),
                      ).remote(*args_for_rank(i))
        for i in range(placement.bundle_count if count is None else count)
    ]


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
