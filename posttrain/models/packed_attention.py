"""`sdpa_packed`: attention over packed rows that costs what the examples cost, not what the row costs.

Training rows are packed (examples end to end, position ids restarting at 0; `posttrain.data.packing`).
On a GPU, flash-attention's varlen kernel attends within each example at no extra cost. Without it,
transformers' `sdpa` builds a dense [T, T] block-diagonal mask for the row and computes all T² scores:
for a 2,048-token row of 62-token OPD samples that is 30x the work of the examples themselves, and it
was half the tiny OPD train step on a CPU (docs/performance.md). PyTorch's own ragged routes do not
cover this on a CPU (nested-tensor sdpa refuses `is_causal`; flex attention compiles per shape), so
this is written here: the row's examples are gathered into a padded [examples, heads, length, dim]
batch — one batch per power-of-two length bucket, so one long example does not pad all the short
ones — and each runs plain causal sdpa; the outputs are gathered back into row order. Padding lives
only inside the attention call (pad keys come after every real query, so causal masking hides them);
embeddings, experts and logits still see the packed row alone.

Registered with transformers' `AttentionInterface` (and an `AttentionMaskInterface` entry that asks
for no mask: the segments come from the position ids), so `attn_implementation="sdpa_packed"` works
with any model that routes attention through the interface (qwen3_moe does). It handles what the
trainer and the packed teacher run: no KV cache, no padding mask, no sliding window. Anything else is
refused with an error rather than computed wrongly.
"""

from __future__ import annotations

import weakref
from functools import lru_cache

import torch
import torch.nn.functional as F

NAME = "sdpa_packed"
# Architectures whose every token-mixing layer is softmax attention reading the position ids, so a
# packed row scores exactly as its examples do apart. qwen3_next is not one: its linear-attention
# (Gated DeltaNet) layers carry a recurrent state along the row, across example boundaries.
PACKABLE_MODEL_TYPES = frozenset({"qwen3_moe", "qwen3", "qwen2_moe", "qwen2", "llama", "mistral", "mixtral"})


def segments(position_ids_BT: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """(start, length) of every example in the flattened rows: a new one starts wherever the position
    does not follow on (transformers' own rule in `find_packed_sequence_indices`) and at every row."""
    B, T = position_ids_BT.shape
    follows_BT = torch.zeros_like(position_ids_BT, dtype=torch.bool)
    follows_BT[:, 1:] = position_ids_BT[:, 1:] == position_ids_BT[:, :-1] + 1
    starts = (~follows_BT).flatten().nonzero().flatten().tolist()
    ends = starts[1:] + [B * T]
    return tuple((s, e - s) for s, e in zip(starts, ends))


@lru_cache(maxsize=8)
def _plan(segs: tuple[tuple[int, int], ...]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Per length bucket: a [n, L] gather index into the flat tokens (pad slots repeat the example's
    last token) and the [n, L] mask of its real slots; plus the permutation that puts the buckets' real tokens back in
    row order. Cached: every layer of a forward (and its backward) sees the same rows."""
    by_bucket: dict[int, list[tuple[int, int]]] = {}
    for start, length in segs:
        by_bucket.setdefault(1 << (length - 1).bit_length(), []).append((start, length))
    gathers, real_positions = [], []
    for _, members in sorted(by_bucket.items()):
        width = max(length for _, length in members)
        starts = torch.tensor([s for s, _ in members])[:, None]
        lengths = torch.tensor([n for _, n in members])[:, None]
        offsets = torch.arange(width)[None, :]
        gathers.append((starts + offsets.minimum(lengths - 1), offsets < lengths))
        real_positions.append((starts + offsets)[offsets < lengths])
    order = torch.cat(real_positions)  # the flat position of each bucket output, in bucket order
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return gathers, inverse


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        position_ids: torch.Tensor | None = None, sliding_window: int | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, Hq, T, D], key/value [B, Hkv, T, D] → ([B, T, Hq, D], None), as transformers expects."""
    B, Hq, T, D = query.shape
    if position_ids is None or key.shape[2] != T or attention_mask is not None or sliding_window:
        raise NotImplementedError(
            f"attn_implementation '{NAME}' handles packed rows without a KV cache, padding mask or sliding window "
            "(the trainer's and the packed teacher's forward); load the model with 'sdpa' for anything else")
    gathers, inverse = _device_plan(position_ids, B, T, query.device)
    flat = [x.transpose(1, 2).reshape(B * T, x.shape[1], D) for x in (query, key, value)]  # [BT, H, D]
    outputs = []
    for index_NL, real_NL in gathers:
        q, k, v = (x[index_NL].transpose(1, 2) for x in flat)  # [N, H, L, D]
        out_NHLD = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout,
                                                  enable_gqa=Hq != key.shape[1])
        outputs.append(out_NHLD.transpose(1, 2)[real_NL])  # [real tokens, Hq, D]
    out = torch.cat(outputs)[inverse]
    return out.reshape(B, T, Hq, D), None


# The plan of the last position ids seen, on the device: (weak reference to them, their version, (B, T, device), plan).
_LAST_PLAN: list = [None, -1, None, None]


def _device_plan(position_ids: torch.Tensor, B: int, T: int, device: torch.device):
    """`_plan` of these position ids, its index tensors on `device`, made once per forward.

    Every layer of a forward (and its recompute in backward) is given the same position-ids tensor; reading
    the segments is a `.tolist()` (on a GPU, a device sync) and the plan's indices are built on the host and
    copied over: per layer that was a sync and L host-to-device copies per forward. Keyed on the tensor
    itself (a weak reference: no id reuse) and its in-place version, so changed ids are read again."""
    ref, version, key, plan = _LAST_PLAN
    if ref is not None and ref() is position_ids and version == position_ids._version and key == (B, T, device):
        return plan
    gathers, inverse = _plan(segments(position_ids.expand(B, T)))
    plan = ([(index.to(device), real.to(device)) for index, real in gathers], inverse.to(device))
    _LAST_PLAN[:] = [weakref.ref(position_ids), position_ids._version, (B, T, device), plan]
    return plan


def no_mask(*args, **kwargs) -> None:
    """The mask builder for `sdpa_packed`: none (the attention reads the segments from the position ids)."""
    return None


@lru_cache(maxsize=32)
def packable(model_path: str, trust_remote_code: bool = False) -> bool:
    """Whether the model at `model_path` can run packed rows under `sdpa_packed` (read from its config)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return config.model_type in PACKABLE_MODEL_TYPES and not getattr(config, "use_sliding_window", False)


def register() -> str:
    """Make `attn_implementation="sdpa_packed"` loadable; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, no_mask)
    return NAME
