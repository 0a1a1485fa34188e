"""The trainer's side of vLLM's NCCL weight transfer (`rollout.weight_transfer: nccl`, GPU only).

vLLM's `NCCLTrainerWeightTransferEngine` (0.32) does the broadcast; what it leaves to its caller, and
what this module adds, is what a run of many engines needs:

- The rank layout. vLLM's worker joins the group at rank `rank_offset + dp_index * TP + its TP rank`
  (`nccl_common.worker_init_process_group`), and vLLM's trainer side sends every engine the same init
  payload with `rank_offset` 1. That is right for one engine (or one data-parallel `AsyncLLM`), but
  here every rollout engine is an `LLM` of its own (data-parallel index 0): with 16 engines every
  engine's first worker would claim rank 1 and the group would wait forever for ranks 2..16. The
  layout is computed once (`nccl_rank_layout`) and each engine gets its own offset.
- Failure. An engine that dies mid-broadcast leaves rank 0 blocked inside NCCL: the engines' half of the
  update (a side thread of vLLM's) is awaited with a timeout, and on an error or the timeout the
  communicator is aborted (`ncclCommAbort`, vLLM's `destroy`), which releases the broadcast with an error
  instead of a hang.
- Bookkeeping: `SyncStats` from the metadata (tensors and bytes sent); a new group (engines restarted)
  first shuts the old one down on both sides, so communicators do not pile up.

Written against vLLM 0.32's source; the NCCL group itself never runs in this project's tests (no GPU):
the layout is a pure function checked against vLLM's own rank formula, and the client's timeout and
abort run with real Ray actors standing in for engines.
"""

from __future__ import annotations

import torch

from posttrain.train.weight_stream import SyncStats, named_weights, weight_metadata

SYNC_TIMEOUT_S = 1800.0  # one sync of the card's 17B student takes seconds; a dead engine is not worth waiting for


def nccl_rank_layout(engine_tp: list[int]) -> tuple[int, list[int]]:
    """(world size, each engine's rank offset) of the trainer + engines group: rank 0 is the trainer's sender,
    engine e's tensor-parallel workers hold ranks offset_e .. offset_e + engine_tp[e] - 1."""
    offsets, next_rank = [], 1
    for tp in engine_tp:
        if tp < 1:
            raise ValueError(f"an engine's tensor parallel must be >= 1, got {tp}")
        offsets.append(next_rank)
        next_rank += tp
    return next_rank, offsets


def engine_init_payloads(payload: dict, engine_tp: list[int]) -> list[dict]:
    """Each engine's copy of vLLM's worker init payload, with its own `rank_offset`."""
    world, offsets = nccl_rank_layout(engine_tp)
    if payload["world_size"] != world:
        raise ValueError(f"the NCCL group was opened for {payload['world_size']} ranks, the engines need {world} "
                         f"(1 trainer + tensor parallel {engine_tp})")
    return [{**payload, "rank_offset": offset} for offset in offsets]


class EngineSyncClient:
    """What vLLM's `RayVLLMWeightSyncClient` is to its trainer engine (the same methods, driving the rollout
    actors), with a rank offset per engine and a bounded wait. Not a subclass: this module is imported where
    vLLM is not installed, and every method here differs from vLLM's."""

    def __init__(self, handles: list, engine_tp: list[int], timeout_s: float = SYNC_TIMEOUT_S):
        self.handles, self.engine_tp, self.timeout_s = list(handles), engine_tp, timeout_s
        self.on_failure = lambda: None  # set to abort the trainer's communicator once it exists

    def _wait(self, method: str, requests: list) -> None:
        import ray

        refs = [getattr(h, method).remote(*r) for h, r in zip(self.handles, requests)]
        try:
            ray.get(refs, timeout=self.timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as e:
            self.on_failure()  # the broadcast on rank 0 waits for this engine: release it with an error
            raise RuntimeError(f"NCCL weight sync: '{method}' failed or took over {self.timeout_s:.0f} s on an engine "
                               f"({type(e).__name__}); the transfer group was aborted") from e

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        payloads = engine_init_payloads(init_info, self.engine_tp)
        self._wait("init_weight_transfer_engine", [(WeightTransferInitRequest(init_info=p),) for p in payloads])

    def start_weight_update(self) -> None:
        self._wait("start_weight_update", [()] * len(self.handles))

    def update_weights(self, update_info) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        self._wait("update_weights", [(WeightTransferUpdateRequest(update_info=update_info),)] * len(self.handles))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._wait("finish_weight_update", [()] * len(self.handles))

    def shutdown_weight_transfer_engine(self) -> None:
        import ray

        for handle in self.handles:  # best effort: an engine that died has nothing left to shut down
            try:
                ray.get(handle.shutdown_weight_transfer_engine.remote(), timeout=60)
            except (ray.exceptions.RayError, TimeoutError):
                pass


def sync_stats(meta: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> SyncStats:
    """What one NCCL sync moves (rank 0's view): every tensor of the metadata, once, whatever the engines."""
    nbytes = sum(torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() for _, dtype, shape in meta)
    return SyncStats(tensors=len(meta), bytes=nbytes)


class NCCLSender:
    """Rank `rank`'s end of the NCCL group with `receivers` (rollout actors, `engine_tp` workers each).
    Every trainer rank makes one and calls `send()` per sync (ZeRO-3 gathers are collectives); rank 0 holds
    the communicator. `address`: rank 0's (host, free port) for the rendezvous."""

    def __init__(self, module: torch.nn.Module, zero3: bool, lora: bool, receivers: list, engine_tp: list[int],
                 rank: int, address: tuple[str, int]):
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        self.meta = weight_metadata(module, lora)

        class Source(WeightSource):  # a fresh pass of the stream each round, and its metadata without gathering
            def metadata(self):
                return [ParamMeta(name, dtype, shape) for name, dtype, shape in weight_metadata(module, lora)]

            def __iter__(self):
                return named_weights(module, zero3, lora)

        world, _ = nccl_rank_layout(engine_tp)
        info = NCCLTrainerInitInfo(master_address=address[0], master_port=address[1], world_size=world, rank=rank)
        self.client = EngineSyncClient(receivers, engine_tp)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=self.client, source=Source())
        self.client.on_failure = self.engine.shutdown

    def send(self) -> SyncStats | None:
        self.engine.send_weights()
        return sync_stats(self.meta) if self.engine.is_sender else None

    def close(self) -> None:
        """Both ends of the group: the engines' communicators (those still alive), then the trainer's."""
        if self.engine.is_sender:
            self.client.shutdown_weight_transfer_engine()
        self.engine.shutdown()
