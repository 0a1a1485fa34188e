"""Placement: an impossible request fails at once (must-show 3), on the real local Ray."""

from __future__ import annotations

import time

import pytest

from posttrain.infra.cluster import PlacementError, _never_fits, check_nodes, placement_nodes, release, reserve


def test_impossible_requests_fail_at_once_with_the_numbers(ray_local):
    import ray

    cpus = ray.cluster_resources()["CPU"]
    started = time.monotonic()
    with pytest.raises(PlacementError) as err:
        reserve("trainer", 4, 1000, 0)
    message = str(err.value)
    assert "trainer: requested 4 workers x (1000 CPU, 0 GPU) = 4000 CPU, 0 GPU (PACK)" in message
    assert f"4000 CPU > {cpus:g}" in message and f"the cluster has {cpus:g} CPU, 0 GPU on 1 node(s)" in message

    with pytest.raises(PlacementError, match=r"requested 2 workers x \(1 CPU, 8 GPU\) = 2 CPU, 16 GPU.*16 GPU > 0"):
        reserve("teacher", 2, 1, 8)
    with pytest.raises(PlacementError, match=r"STRICT_SPREAD needs 2 distinct nodes .* found 1.*on 1 node"):
        reserve("trainer", 2, 0.5, 0, "STRICT_SPREAD")
    with pytest.raises(PlacementError, match="at least one worker, got 0"):
        reserve("rollout", 0, 1, 0)
    with pytest.raises(PlacementError, match="needs some CPU or GPU"):
        reserve("rollout", 1, 0, 0)
    with pytest.raises(PlacementError, match=r"cluster\.nodes: the config expects 3 nodes, the Ray cluster has .* on 1 node"):
        check_nodes(3)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"impossible placements took {elapsed:.1f} s"


def test_possible_request_is_placed_and_released(ray_local):
    import ray

    group = reserve("trainer", 2, 0.25, 0, "SPREAD")
    try:
        nodes = placement_nodes(group)
        assert len(nodes) == 2 and set(nodes) == {ray.get_runtime_context().get_node_id()}
    finally:
        release([], group)


def test_sft_with_an_impossible_group_stops_before_any_worker(ray_local, tiny_models, tmp_path):
    """The whole stage, as a user runs it: the message names the group and both sides, in seconds."""
    from posttrain.config import SFTConfig, load_config
    from posttrain.stages.sft import run_sft

    cfg = load_config(SFTConfig, "configs/tiny/sft.yaml", [
        f"model.path={tiny_models['student']}", f"output_dir={tmp_path / 'sft'}", "trainer.num_workers=64",
        "trainer.gpus_per_worker=1", "trainer.cpus_per_worker=8", "logging.progress_bar=false"])
    started = time.monotonic()
    with pytest.raises(PlacementError, match=r"trainer: requested 64 workers x \(8 CPU, 1 GPU\) = 512 CPU, 64 GPU"):
        run_sft(cfg)
    assert time.monotonic() - started < 10


def test_feasibility_per_node():
    one_gpu_nodes = [{"CPU": 8, "GPU": 1}] * 4
    assert _never_fits({"CPU": 1, "GPU": 1}, 4, "PACK", one_gpu_nodes) == ""
    assert _never_fits({"CPU": 1, "GPU": 1}, 4, "STRICT_SPREAD", one_gpu_nodes) == ""
    assert "more than the whole cluster has (5 GPU > 4)" in _never_fits({"CPU": 1, "GPU": 1}, 5, "SPREAD", one_gpu_nodes)
    # 4 GPUs in total, but a 2-GPU bundle fits no single node.
    assert "cannot be split across nodes" in _never_fits({"CPU": 1, "GPU": 2}, 2, "PACK", one_gpu_nodes)
    assert "STRICT_PACK needs one node that holds all 2" in _never_fits({"CPU": 1, "GPU": 1}, 2, "STRICT_PACK",
                                                                         one_gpu_nodes)
    eight = [{"CPU": 64, "GPU": 8}] * 2
    assert _never_fits({"CPU": 8, "GPU": 1}, 16, "PACK", eight) == ""
    assert "STRICT_SPREAD needs 3 distinct nodes" in _never_fits({"CPU": 8, "GPU": 1}, 3, "STRICT_SPREAD", eight)


class SeesDevices:
    def visible(self):
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_worker_given_no_gpu_sees_none(ray_local):
    """Issue 24 row 6: Ray >= 2.60 stopped hiding the node's GPUs from an actor that asks for none, so a worker
    configured for the CPU picked cuda:0 unreserved. Every worker posttrain spawns with no GPU sees none."""
    import ray

    from posttrain.infra.cluster import spawn

    group = reserve("rollout", 1, 0.25, 0)
    try:
        (worker,) = spawn(SeesDevices, group, 0.25, 0, lambda i: ())
        assert ray.get(worker.visible.remote()) == ""
    finally:
        release([worker] if "worker" in locals() else [], group)
