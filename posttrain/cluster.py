"""Ray: start or join a cluster, and reserve devices for a worker group with a placement group."""

from __future__ import annotations

import os

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


def reserve(name: str, num_workers: int, cpus_per_worker: int, gpus_per_worker: int, strategy: str = "PACK"):
    """A placement group of one bundle per worker; fails at once when the cluster is too small."""
    import ray
    from ray.util.placement_group import placement_group

    if num_workers < 1:
        raise PlacementError(f"{name}: a group needs at least one worker, got {num_workers}")
    total = ray.cluster_resources()
    need_cpu, need_gpu = num_workers * cpus_per_worker, num_workers * gpus_per_worker
    if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
        raise PlacementError(
            f"{name}: requested {num_workers} workers x ({cpus_per_worker} CPU, {gpus_per_worker} GPU) = "
            f"{need_cpu} CPU, {need_gpu} GPU; the cluster has {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"
        )
    bundle = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    group = placement_group([dict(bundle) for _ in range(num_workers)], strategy=strategy, name="")
    ready, _ = ray.wait([group.ready()], timeout=120)
    if not ready:
        ray.util.remove_placement_group(group)
        raise PlacementError(f"{name}: could not place {num_workers} x {bundle} within 120 s "
                             f"(available now: {ray.available_resources()})")
    return group


def default_cpus_per_worker(num_workers: int) -> int:
    import ray

    return max(1, int(ray.available_resources().get("CPU", 1)) // num_workers)
