"""The trainer's weights as a stream of (name, tensor), gathered one module at a time, and sent to engines.

The rollout engines want plain weights under the base model's names. Building them as a state dict
on rank 0 (DeepSpeed's consolidated ZeRO-3 state dict, then a LoRA-merged copy, then the buckets)
held the model three times in host memory: ~100 GB for the card's 17B student. Here nothing is
built whole: `named_weights` walks the modules in order and yields each one's own tensors — under
ZeRO-3 inside `GatheredParameters` of that module only (every rank walks in lockstep, as the gather
is a collective); a LoRA-adapted module is gathered whole and yields base + B·A under the base
names (peft's `get_delta_weight`, as `posttrain.train.lora.merged_state_dict`). `send_weights` copies
the stream into one bucket at a time (`posttrain.infra.weight_buckets`) and hands each to every
engine before the next is filled, so rank 0's host memory holds one bucket and one gathered module.
For 16 engines of a 17B MoE nothing is copied per engine: the engines of a node share one /dev/shm
copy of each bucket (see `posttrain.infra.weight_buckets`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from posttrain.infra.weight_buckets import SharedBucket, fill_buckets, relay_on, update_info
from posttrain.train.lora import adapter_delta, base_name, is_adapter


@contextlib.contextmanager
def gathered(params: list, zero3: bool, modifier_rank: int | None = None):
    """Under ZeRO-3, `params` whole on every rank for the block (a collective); with `modifier_rank`, that
    rank's changes are partitioned back afterwards. Otherwise nothing to do."""
    if zero3 and params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


def _units(module: torch.nn.Module, lora: bool) -> Iterator[tuple[str, torch.nn.Module, list, bool]]:
    """The sync's units, in module order: (prefix, module, its (name, tensor) pairs, whole) — a module's own
    parameters and persistent buffers, or (`whole`, with LoRA) an adapted layer with everything inside
    it but the adapters. Tied parameters come once."""
    from peft.tuners.lora import LoraLayer

    model = module.get_base_model() if lora else module
    sent: set[int] = set()
    skip = None  # the prefix of a LoRA layer already taken whole
    for prefix, sub in model.named_modules():
        if skip is not None and prefix.startswith(skip):
            continue
        whole = lora and isinstance(sub, LoraLayer)
        if whole:
            skip = prefix + "."
            named = [(f"{prefix}.{n}", p) for n, p in sub.named_parameters()
                     if not is_adapter(f"{prefix}.{n}") and id(p) not in sent]
        else:
            join = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
            named = [(join(n), p) for n, p in sub.named_parameters(recurse=False) if id(p) not in sent]
            named += [(join(n), b) for n, b in sub.named_buffers(recurse=False) if n not in sub._non_persistent_buffers_set]
        sent.update(id(t) for _, t in named)
        if named:
            yield prefix, sub, named, whole


def named_weights(module: torch.nn.Module, zero3: bool, lora: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(base-model name, tensor) for every parameter and persistent buffer, tied ones once, LoRA merged.

    A yielded tensor is only valid until the next item (under ZeRO-3 its module is released then): copy it.
    """
    for prefix, sub, named, whole in _units(module, lora):
        params = list(sub.parameters()) if whole else [t for _, t in named if isinstance(t, torch.nn.Parameter)]
        with gathered(params, zero3), torch.no_grad():
            deltas = _lora_deltas(prefix, sub) if whole else {}
            for name, tensor in named:
                key = base_name(name)
                yield key, (tensor.float() + deltas[key]).to(tensor.dtype) if key in deltas else tensor.detach()


def weight_metadata(module: torch.nn.Module, lora: bool) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, full shape) of what `named_weights` yields, in its order, gathering nothing."""
    return [(base_name(name), t.dtype, tuple(getattr(t, "ds_shape", t.shape)))
            for _, _, named, _ in _units(module, lora) for name, t in named]


def _lora_deltas(prefix: str, layer) -> dict[str, torch.Tensor]:
    """Every adapter's B·A scaled (peft's `get_delta_weight`) in a LoRA layer, nested ones included, by the
    base-model name of the tensor it adapts (its parameters gathered by the caller)."""
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, sub in [(prefix, layer)] + [(f"{prefix}.{n}", m) for n, m in layer.named_modules() if n]:
        if isinstance(sub, LoraLayer):
            target, delta = adapter_delta(name, sub)
            deltas[target] = deltas.get(target, 0) + delta.float()
    return deltas


@dataclass
class SyncStats:
    """What one weight sync moved, as rank 0 saw it."""

    tensors: int = 0
    bytes: int = 0
    buckets: int = 0
    largest_bucket_bytes: int = 0
    host_peak_growth_bytes: int = 0  # rank 0's peak resident memory during the sync over before it (Linux)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


@contextlib.contextmanager
def _measured(stats: SyncStats):
    """Rank 0's peak resident memory during the block, over before it (Linux: the peak is reset first)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set
        before = _status_kib("VmRSS")
    except OSError:  # not Linux, or not allowed: not measured
        yield
        return
    yield
    stats.host_peak_growth_bytes = max(0, _status_kib("VmHWM") - before) * 1024


def send_weights(named: Iterator[tuple[str, torch.Tensor]], receivers: list, nodes: list[str], here: str,
                 bucket_mb: float) -> SyncStats:
    """Rank 0: stream `named` into `receivers` (engine actors; `nodes`: where each runs, `here`: the
    sender's node) one bucket at a time, as vLLM's weight-transfer protocol runs a sync:
    `start_weight_update`, `update_weights(info)` per bucket, `finish_weight_update` (which raises on an
    engine where a name was not loaded or a parameter got nothing). A bucket is a /dev/shm file on this
    node; other nodes get it through the object store, put once, and their `Relay`'s /dev/shm.
    """
    import ray

    relays = {node: relay_on(node) for node in sorted(set(nodes) - {here})}
    stats = SyncStats()
    with _measured(stats):
        ray.get([r.start_weight_update.remote() for r in receivers])
        for bucket in fill_buckets(named, bucket_mb, SharedBucket.create):
            _send_bucket(bucket, receivers, nodes, here, relays)
            stats.tensors += len(bucket)
            stats.bytes += bucket.nbytes
            stats.buckets += 1
            stats.largest_bucket_bytes = max(stats.largest_bucket_bytes, bucket.buffer.size)
            del bucket
        ray.get([r.finish_weight_update.remote() for r in receivers])
    return stats


def _send_bucket(bucket, receivers: list, nodes: list[str], here: str, relays: dict) -> None:
    """Every receiver loads the bucket (from its node's /dev/shm) before this returns; then it is removed."""
    import ray

    info = {here: update_info(bucket)}
    try:
        if relays:
            ref = ray.put(bucket.buffer[:bucket.nbytes])
            info.update(zip(relays, ray.get([relay.stage.remote(ref, info[here]["entries"])
                                             for relay in relays.values()])))
            del ref
        ray.get([r.update_weights.remote(info[node]) for r, node in zip(receivers, nodes)])
    finally:
        SharedBucket.remove(bucket.shm_name)
        ray.get([relay.drop.remote(info[node]["shm_name"]) for node, relay in relays.items() if node in info])


def drain(named: Iterator) -> None:
    """Ranks other than 0: walk the stream for its ZeRO-3 gathers (collectives), sending nothing."""
    for _ in named:
        pass
