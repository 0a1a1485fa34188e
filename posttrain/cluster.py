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
