"""Inside vLLM's worker processes: the weight sync's receiving end (imported by vLLM, never by posttrain).

`LLM(worker_extension_cls="posttrain.engines.vllm_sync.WeightSyncExtension",
weight_transfer_config={"backend": "posttrain_shm"})` loads this module in every worker before the
model, which registers `posttrain_shm` with vLLM's weight-transfer factory: a backend of vLLM's own
weight-transfer API (`start_weight_update` / `update_weights` / `finish_weight_update`) whose update
carries a bucket's /dev/shm file name and entry table (msgpack-native; vLLM's `collective_rpc` cannot
carry tensors: below 256 bytes they fail to pickle, above they arrive as metadata only). vLLM's
built-in backends are GPU-only (`nccl` for engines on other GPUs, `ipc` for a colocated one).

The load is vLLM's layerwise reload — what its `nccl`/`ipc` engines and `reload_weights` use — in ONE
session per sync: a layer whose tensors straddle two buckets is processed once, after its last tensor
arrived (a session per bucket measured 7.26 nats off). On a CPU two of the reload's shortcuts give
wrong weights silently, found by comparing with a fresh engine (lab: 1.83 nats off, now 0.0):
- the fused-MoE method treats a reload as "weights only" and skips the CPU experts' pad-and-repack,
  so the new weights are read in the wrong layout: its kernel is unset for the session (a first load);
- the tied lm_head's CPU GEMM keeps a packed copy of the old embedding: it is re-packed afterwards.

Names are verified: tensors are loaded one by one, so a name vLLM's loader skips without a word
(an unexpected `.bias`, ...) is caught; and a parameter no tensor was loaded into is caught at the end.
The verdict is kept for `weight_sync_report`, not raised in `finish_weight_update`: vLLM clears its
"update active" flag only after that returns, so raising there would refuse every later sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

from posttrain.infra.weight_buckets import received

BACKEND = "posttrain_shm"
NCCL_BACKEND = "posttrain_nccl"


@dataclass
class ShmInitInfo(WeightTransferInitInfo):
    pass


@dataclass
class ShmUpdateInfo(WeightTransferUpdateInfo):
    shm_name: str
    entries: list = field(default_factory=list)  # [name, dtype, shape, offset, nbytes]


def _unset_moe_kernels(model) -> list:
    """Make the session's post-load processing of every fused-MoE layer a first-time setup (CPU: pad
    and repack the experts); returns (method, kernel) pairs to give back to layers that got nothing."""
    saved = []
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if getattr(method, "moe_kernel", None) is not None:
            saved.append((method, method.moe_kernel))
            method.moe_kernel = None
    return saved


def _repack_vocab_layers(model) -> None:
    """CPU: the lm_head's GEMM runs on a packed copy of its (tied) weight made at load time."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear") and module.weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


class _CheckedLoads:
    """A sync's names verified, whatever carries the bytes: tensors are loaded one by one, so a name vLLM's
    loader skips without a word is caught, and at the end a parameter nothing was loaded into."""

    model: torch.nn.Module

    def _begin_checks(self) -> None:
        self.loaded: set[str] = set()
        self.not_loaded: list[str] = []

    def _load_checked(self, weights, model: torch.nn.Module | None = None) -> None:
        """Load (name, tensor) pairs into `model` (this engine's) one by one, recording what each loaded (an
        ignored name returns nothing)."""
        from vllm.model_executor.models.utils import _get_tied_embedding_params

        model = self.model if model is None else model
        tied = _get_tied_embedding_params(model)  # aliases of a tied weight: loaded through the other name
        for name, tensor in weights:
            if name in tied:
                continue
            got = model.load_weights([(name, tensor)])
            self.loaded |= set(got or ())
            if not got:
                self.not_loaded.append(name)

    def _end_checks(self) -> None:
        missing = sorted({name for name, _ in self.model.named_parameters()} - self.loaded)
        self.report = {"not_loaded": list(self.not_loaded), "missing": missing, "loaded": len(self.loaded)}


class ShmWeightTransferEngine(_CheckedLoads, WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.saved_kernels: list = []
        self._begin_checks()
        self.report: dict = {"not_loaded": [], "missing": [], "loaded": 0}

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
        from vllm.platforms import current_platform

        self._begin_checks()
        self.saved_kernels = _unset_moe_kernels(self.model) if current_platform.is_cpu() else []
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: ShmUpdateInfo) -> None:
        with received({"shm_name": update_info.shm_name, "entries": update_info.entries}) as named, torch.no_grad():
            self._load_checked(named)
            if self.device.type != "cpu":
                torch.accelerator.synchronize()  # the copies from the mapped pages must land before it closes

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
        from vllm.platforms import current_platform

        try:
            finalize_layerwise_reload(self.model, self.model_config)
        finally:
            for method, kernel in self.saved_kernels:  # layers that received nothing keep their kernel
                if method.moe_kernel is None:
                    method.moe_kernel = kernel
            self.saved_kernels = []
        if current_platform.is_cpu():
            _repack_vocab_layers(self.model)
        self._end_checks()

    def shutdown(self) -> None:
        pass


class _LoadsOneByOne:
    """The model as vLLM's NCCL engine sees it in `receive_weights`: its `load_weights` goes through the checks."""

    def __init__(self, engine: "CheckedNCCLWeightTransferEngine", model: torch.nn.Module):
        self._engine, self._model = engine, model

    def load_weights(self, weights):
        self._engine._load_checked(weights, self._model)

    def __getattr__(self, name):
        return getattr(self._model, name)


class CheckedNCCLWeightTransferEngine(_CheckedLoads, NCCLWeightTransferEngine):
    """vLLM's NCCL receiver (GPU), with the shm path's name checks: vLLM's loads a packed buffer's tensors in
    one `load_weights` call and cannot tell a skipped name (`weight_transfer: nccl`'s engine side)."""

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self._begin_checks()
        self.report: dict = {"not_loaded": [], "missing": [], "loaded": 0}

    def start_weight_update(self) -> None:
        self._begin_checks()
        super().start_weight_update()

    def receive_weights(self, update_info) -> None:
        model, self.model = self.model, _LoadsOneByOne(self, self.model)
        try:
            super().receive_weights(update_info)
        finally:
            self.model = model

    def finish_weight_update(self) -> None:
        super().finish_weight_update()
        self._end_checks()


class WeightSyncExtension:
    """Mixed into vLLM's worker class; methods are called by name through `LLM.collective_rpc`."""

    def weight_sync_report(self) -> dict:
        """The last sync's verdict in this worker: names sent but not loaded, parameters never loaded."""
        return dict(getattr(self.weight_transfer_engine, "report", {"not_loaded": [], "missing": []}))


for _name, _engine in ((BACKEND, ShmWeightTransferEngine), (NCCL_BACKEND, CheckedNCCLWeightTransferEngine)):
    try:
        WeightTransferEngineFactory.register_engine(_name, _engine)
    except ValueError:  # registered already (imported twice in one process)
        pass
