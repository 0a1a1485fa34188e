"""Weight sync from the trainer to the rollout engines, one flat bucket at a time.

An MoE has thousands of tensors; moving them one by one costs a round trip each. The trainer's rank 0
copies its weights, as it gathers them layer by layer, into a bucket of about `bucket_mb`: one
contiguous byte buffer with a table of (name, dtype, shape, offset) (slime flattens its 512 MB NCCL
buckets the same way). Each bucket is handed to every engine and freed before the next one is
filled, so the sender's host memory holds one bucket, never the model (`fill_buckets`).

Where the bucket lives is the transport. On the sender's node it is a file in /dev/shm, mapped by
the sender as it fills it and by every engine (hf, vLLM, each vLLM worker process) that loads it:
one copy of the bytes on the node, the file's name on the wire (`SharedBucket`, `update_info`).
For engines on other nodes the sender puts the bucket into Ray's object store once; a `Relay` on each
such node copies it into that node's /dev/shm, so it crosses the network once per node and is copied
once per node, not per engine. The wire format is a dict that vLLM's msgpack-based `collective_rpc`
carries as it is: {"shm_name", "entries"}.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

_ALIGN = 64  # every tensor starts at a multiple of this, so any dtype can view its bytes
SHM_DIR = "/dev/shm"
SHM_PREFIX = "posttrain-weights-"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                                      torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                                      torch.bool)}

Entry = tuple[str, torch.dtype, tuple[int, ...], int, int]  # (name, dtype, shape, offset, nbytes)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


@dataclass(eq=False)  # compared by identity: the buffers are large
class FlatBucket:
    buffer: np.ndarray  # uint8 [nbytes]
    entries: list[Entry] = field(default_factory=list)
    shm_name: str | None = None  # the /dev/shm file that holds `buffer`, where it is one

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs viewing the buffer (no copy; read them, don't write them)."""
        return views(self.buffer, self.entries)

    @property
    def nbytes(self) -> int:
        return max((offset + nbytes for _, _, _, offset, nbytes in self.entries), default=0)

    def wire_entries(self) -> list[list]:
        """The table as msgpack-native lists: [name, dtype name, shape, offset, nbytes]."""
        return [[name, str(dtype).removeprefix("torch."), list(shape), offset, nbytes]
                for name, dtype, shape, offset, nbytes in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


def views(buffer: np.ndarray, entries: Iterable) -> Iterator[tuple[str, torch.Tensor]]:
    with warnings.catch_warnings():  # a mapped or object-store buffer may be read-only; it is only read here
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(buffer) if buffer.size else torch.empty(0, dtype=torch.uint8)
    for name, dtype, shape, offset, nbytes in entries:
        dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        yield name, flat[offset:offset + nbytes].view(dtype).view(tuple(shape))


# --------------------------------------------------------------------------------------------------
# Filling buckets from a stream of tensors
# --------------------------------------------------------------------------------------------------


def heap_buffer(nbytes: int) -> FlatBucket:
    return FlatBucket(np.empty(nbytes, dtype=np.uint8))


@torch.no_grad()
def fill_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_mb: float,
                 new_bucket: Callable[[int], FlatBucket] = heap_buffer) -> Iterator[FlatBucket]:
    """Buckets of about `bucket_mb`, filled from `named` as it yields, one alive at a time.

    Each tensor is copied into the bucket the moment it arrives, so `named` may hand out a view that
    is only valid until its next item (a ZeRO-3 gathered parameter). A bucket is yielded full and is
    the caller's until it asks for the next one; a tensor larger than `bucket_mb` gets a bucket of its
    own size (a fused expert tensor can be). `new_bucket(nbytes)` makes the empty bucket: in the heap,
    or in /dev/shm (`SharedBucket.create`) so that no copy is needed to share it.
    """
    limit = int(bucket_mb * 1024 * 1024)
    bucket, used = None, 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket is not None and used + nbytes > bucket.buffer.size:
            yield bucket
            bucket = None
        if bucket is None:
            bucket, used = new_bucket(max(limit, _aligned(nbytes))), 0
        flat = torch.from_numpy(bucket.buffer)
        flat[used:used + nbytes].view(tensor.dtype).view(tensor.shape).copy_(tensor.detach())
        bucket.entries.append((name, tensor.dtype, tuple(tensor.shape), used, nbytes))
        used += _aligned(nbytes)
    if bucket is not None:
        yield bucket


def buckets(state: dict[str, torch.Tensor], bucket_mb: float) -> list[FlatBucket]:
    """A whole state dict as heap buckets (for tests and small models; the sync streams instead)."""
    return list(fill_buckets(state.items(), bucket_mb))


# --------------------------------------------------------------------------------------------------
# /dev/shm: one copy of a bucket per node, shared by name
# --------------------------------------------------------------------------------------------------


class SharedBucket:
    """Buckets in /dev/shm files, created by the sender and removed once every engine has loaded them."""

    @staticmethod
    def create(nbytes: int) -> FlatBucket:
        """An empty bucket backed by a new /dev/shm file (tmpfs: only the pages written use memory)."""
        name = f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, max(1, nbytes))
            mapped = mmap.mmap(fd, max(1, nbytes))
        finally:
            os.close(fd)
        return FlatBucket(np.frombuffer(mapped, dtype=np.uint8, count=nbytes), shm_name=name)

    @staticmethod
    def remove(shm_name: str | None) -> None:
        """Unlink the file; its pages go once the last mapping (the sender's bucket) is dropped."""
        if shm_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, shm_name))

    @staticmethod
    @contextlib.contextmanager
    def mapped(shm_name: str) -> Iterator[np.ndarray]:
        """A read-only view of /dev/shm/<shm_name> while the block runs."""
        fd = os.open(os.path.join(SHM_DIR, shm_name), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        finally:
            os.close(fd)
        try:
            yield np.frombuffer(mapped, dtype=np.uint8) if mapped is not None else np.empty(0, dtype=np.uint8)
        finally:
            if mapped is not None:
                with contextlib.suppress(BufferError):  # a view still alive: the map goes with it
                    mapped.close()



def update_info(bucket: FlatBucket) -> dict:
    """What travels to an engine for one bucket: the /dev/shm file's name on its node, and the table."""
    return {"shm_name": bucket.shm_name, "entries": bucket.wire_entries()}


@contextlib.contextmanager
def received(info: dict) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The (name, tensor) views of one received bucket (`update_info`) while the block runs."""
    with SharedBucket.mapped(info["shm_name"]) as buffer:
        yield list(views(buffer, info["entries"]))


class Relay:
    """A Ray actor on a node other than the sender's (no CPU of its own): it takes each bucket from the
    object store (Ray moves it to the node once) into the node's /dev/shm, where every engine of the
    node loads it by name, and removes it after."""

    def stage(self, buffer: np.ndarray, entries: list) -> dict:
        bucket = SharedBucket.create(buffer.size)
        bucket.buffer[:] = buffer
        return {"shm_name": bucket.shm_name, "entries": entries}

    def drop(self, shm_name: str) -> None:
        SharedBucket.remove(shm_name)


_relays: dict[str, object] = {}


def relay_on(node_id: str):
    """This process's relay on `node_id` (made on first use, kept for later syncs)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if node_id not in _relays:
        _relays[node_id] = ray.remote(Relay).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    return _relays[node_id]


@torch.no_grad()
def load_tensors(model: torch.nn.Module, named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Copy tensors into a live model in place, by name; returns the names set. An unknown name raises."""
    params = model.state_dict(keep_vars=True)  # every name, tied ones included (same tensor)
    named = list(named)
    missing = [name for name, _ in named if name not in params]
    if missing:
        raise KeyError(f"weight sync: the rollout model has no tensor(s) {missing[:5]}")
    for name, tensor in named:
        params[name].copy_(tensor.to(params[name].dtype))
    return [name for name, _ in named]


def load_bucket(model: torch.nn.Module, bucket: FlatBucket) -> int:
    """Copy a bucket into a live model in place; returns how many tensors it set."""
    return len(load_tensors(model, bucket.tensors()))
