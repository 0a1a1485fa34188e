"""The NCCL weight transfer's trainer side (issue 24 rows 1 and 9), checked here where no GPU runs it: the rank
layout against vLLM's own rank formula, the client with real Ray actors standing in for the engines (only the
NCCL communicator is faked), the receiver's name checks with vLLM's broadcast faked."""

import time
from types import SimpleNamespace

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

import vllm.distributed.weight_transfer.nccl_common as nccl_common
from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload

from posttrain.train.nccl_sync import EngineSyncClient, engine_init_payloads, nccl_rank_layout, sync_stats
from posttrain.train.weight_stream import named_weights, weight_metadata


def ranks_vllm_gives(payloads: list[dict], engine_tp: list[int], monkeypatch) -> list[int]:
    """The rank each engine worker joins the group at, computed by vLLM's own `worker_init_process_group`
    (the communicator it would open is replaced by the rank it was asked for)."""
    monkeypatch.setattr(nccl_common, "stateless_init_process_group", lambda addr, port, rank, world, device: rank)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    ranks = []
    for payload, tp in zip(payloads, engine_tp):
        info = NCCLWeightTransferInitInfo(**payload)
        for tp_rank in range(tp):  # every engine is an LLM of its own: data-parallel index 0
            parallel = SimpleNamespace(data_parallel_index=0, world_size=tp, rank=tp_rank)
            ranks.append(nccl_common.worker_init_process_group(info, parallel))
    return ranks


@pytest.mark.parametrize("engines, tp", [(16, 1), (4, 4), (1, 8)])
def test_every_engine_worker_gets_its_own_rank_in_the_group(engines, tp, monkeypatch):
    """Row 1: vLLM's trainer side sends each engine the same payload (rank_offset 1): with 16 engines every
    engine's first worker claimed rank 1. Each engine now gets its own offset: ranks 1..world-1, once each."""
    engine_tp = [tp] * engines
    world, offsets = nccl_rank_layout(engine_tp)
    assert world == 1 + engines * tp and offsets == [1 + i * tp for i in range(engines)]
    vllm_payload = worker_init_payload(NCCLWeightTransferInitInfo(master_address="h", master_port=1, rank_offset=1,
                                                                  world_size=world))
    ranks = ranks_vllm_gives(engine_init_payloads(vllm_payload, engine_tp), engine_tp, monkeypatch)
    assert sorted(ranks) == list(range(1, world))
    if engines > 1:  # what vLLM's payload as is gives: collisions, and ranks nobody takes
        assert len(set(ranks_vllm_gives([vllm_payload] * engines, engine_tp, monkeypatch))) < world - 1


def test_a_group_opened_for_the_wrong_size_is_refused_before_any_engine_joins():
    payload = {"master_address": "h", "master_port": 1, "rank_offset": 1, "world_size": 5}
    with pytest.raises(ValueError, match=r"opened for 5 ranks, the engines need 17"):
        engine_init_payloads(payload, [4] * 4)


@ray.remote(num_cpus=0)
class FakeEngine:
    """A rollout actor's weight-transfer methods, without vLLM: records what it was sent; `hang` or `die` in
    update_weights as an engine stuck or killed mid-broadcast."""

    def __init__(self, behaviour: str = ""):
        self.behaviour, self.init = behaviour, None

    def init_weight_transfer_engine(self, request):
        self.init = request.init_info

    def update_weights(self, request):
        if self.behaviour == "hang":
            time.sleep(60)
        if self.behaviour == "die":
            import os

            os._exit(1)

    def shutdown_weight_transfer_engine(self):
        pass

    def received_init(self):
        return self.init


def test_the_client_sends_each_engine_its_offset_and_aborts_on_an_engine_stuck_or_dead(ray_local):
    """Row 9: an engine that hangs or dies mid-broadcast left rank 0 blocked in NCCL for ever. The engines'
    half of the update now has a deadline, and a failure aborts the communicator (which frees the broadcast)."""
    healthy = [FakeEngine.remote() for _ in range(2)]
    client = EngineSyncClient(healthy, [2, 2], timeout_s=30)
    client.init_weight_transfer_engine({"master_address": "h", "master_port": 1, "rank_offset": 1, "world_size": 5})
    assert [ray.get(e.received_init.remote())["rank_offset"] for e in healthy] == [1, 3]
    client.update_weights({"names": []})  # healthy engines: no abort
    for behaviour in ("hang", "die"):
        aborted = []
        client = EngineSyncClient(healthy + [FakeEngine.remote(behaviour)], [1, 1, 1], timeout_s=3)
        client.on_failure = lambda: aborted.append(True)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"'update_weights' failed or took over 3 s .* aborted"):
            client.update_weights({"names": []})
        assert aborted == [True] and time.monotonic() - started < 30
        client.shutdown_weight_transfer_engine()  # best effort over a dead engine: no error


def test_a_sync_reports_what_it_moved(tiny_models):
    """Row 9: the NCCL path returned empty SyncStats; they now count every tensor and byte of the stream."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    stats = sync_stats(weight_metadata(model, lora=False))
    sent = [t for _, t in named_weights(model, zero3=False, lora=False)]
    assert stats.tensors == len(sent) and stats.bytes == sum(t.numel() * t.element_size() for t in sent) > 0


def test_the_nccl_receiver_names_a_tensor_vllm_skipped(monkeypatch):
    """Row 9: vLLM's NCCL receiver loads a packed buffer in one `load_weights` call and cannot tell a name its
    loader ignored; posttrain's receiver loads one by one and reports it, as the shm path does (the broadcast,
    GPU-only, is faked: it hands over the tensors the update names)."""
    import vllm.distributed.weight_transfer.nccl_engine as nccl_engine
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

    from posttrain.engines.vllm_sync import CheckedNCCLWeightTransferEngine

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))
            self.v = torch.nn.Parameter(torch.zeros(2))

        def load_weights(self, weights):  # as vLLM's loaders: an unknown name is skipped without a word
            got = set()
            for name, tensor in weights:
                if name == "w":
                    self.w.data.copy_(tensor)
                    got.add(name)
            return got

    def broadcast(iterator, group, src, post_unpack_func, buffer_size_bytes, num_buffers, device):
        post_unpack_func([(name, torch.ones(shape, dtype=dtype)) for name, (shape, dtype) in iterator])

    monkeypatch.setattr(nccl_engine, "packed_nccl_broadcast_consumer", broadcast)
    engine = object.__new__(CheckedNCCLWeightTransferEngine)  # vLLM's constructor needs a VllmConfig
    model = Model()
    engine.model, engine.model_update_group, engine.device = model, object(), torch.device("cpu")
    engine.packed, engine.packed_buffer_size_bytes, engine.packed_num_buffers = True, 1 << 20, 2
    engine._begin_checks()
    engine.receive_weights(NCCLWeightTransferUpdateInfo(names=["w", "w.bias"], dtype_names=["float32"] * 2,
                                                        shapes=[[2], [2]]))
    engine._end_checks()
    assert engine.model is model and torch.equal(model.w, torch.ones(2))
    assert engine.report == {"not_loaded": ["w.bias"], "missing": ["v"], "loaded": 1}
