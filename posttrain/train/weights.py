"""Weight sync from the trainer to rollout engines, in buckets.

An MoE has thousands of tensors; moving them one by one costs a round trip each. The trainer's
rank 0 cuts its (gathered) state dict into buckets of about `bucket_mb` and puts each into Ray's
object store once; every rollout worker pulls the same buckets (slime does the same with 512 MB
buckets over NCCL).
"""

from __future__ import annotations

import torch


def buckets(state: dict[str, torch.Tensor], bucket_mb: int) -> list[dict[str, torch.Tensor]]:
    limit = bucket_mb * 1024 * 1024
    out, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            out.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    if current:
        out.append(current)
    return out


@torch.no_grad()
def load_bucket(model: torch.nn.Module, bucket: dict[str, torch.Tensor]) -> int:
    """Copy a bucket into a live model in place; returns how many tensors it set."""
    params = model.state_dict(keep_vars=True)  # every name, tied ones included (same tensor)
    missing = [name for name in bucket if name not in params]
    if missing:
        raise KeyError(f"weight sync: the rollout model has no tensor(s) {missing[:5]}")
    for name, tensor in bucket.items():
        params[name].copy_(tensor.to(params[name].dtype))
    return len(bucket)
