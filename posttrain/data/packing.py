"""Padding-free packing: examples laid end to end in fixed token budgets.

Position ids restart at 0 for every example; transformers reads those restarts as sequence
boundaries (`find_packed_sequence_indices`) and masks attention across examples, so no token
attends outside its own example and no pad token ever reaches the experts' routers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64, restarting at 0 per example
    labels: torch.Tensor  # [T] int64: the next token where it is a training target, else -100
    num_examples: int
    # Per-position values aligned with `labels` (what OPD needs about each target: the sampler's
    # and the teacher's log-probs, the teacher's top-k), shifted exactly as the labels are.
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.labels.to(device),
                           self.num_examples, {k: v.to(device) for k, v in self.extras.items()})

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel()) if self.num_examples else 0

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def empty_batch(pad_id: int) -> PackedBatch:
    """A one-token placeholder with no targets: keeps every worker at the same micro-batch count."""
    return PackedBatch(torch.tensor([pad_id]), torch.tensor([0]), torch.tensor([IGNORE]), num_examples=0)


def with_empty_extras(empty: PackedBatch, like: PackedBatch) -> PackedBatch:
    """A placeholder carrying zero extras of the same names and trailing shapes as a real batch."""
    empty.extras = {k: torch.zeros((1, *v.shape[1:]), dtype=v.dtype) for k, v in like.extras.items()}
    return empty


def shifted_labels(input_ids: list[int], loss_mask: list[int]) -> list[int]:
    """Position t predicts token t+1; it is a target only where token t+1 is in the loss mask."""
    return [input_ids[t + 1] if loss_mask[t + 1] else IGNORE for t in range(len(input_ids) - 1)] + [IGNORE]


def pack(examples: list[tuple], budget: int) -> list[PackedBatch]:
    """First-fit-decreasing bin packing of examples into `budget`-token bins.

    An example is (input_ids, loss_mask) or (input_ids, loss_mask, extras), where `extras` maps a
    name to a tensor whose first dimension runs over the example's tokens (the value belongs to the
    token, like the mask). Deterministic and independent of the number of workers, so the same
    global batch gives the same micro-batches (and the same loss) on 1 or N workers.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i][0])
        if n > budget:
            raise ValueError(f"example of {n} tokens exceeds the pack budget of {budget}")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    packed = []
    for members in bins:
        ids, pos, labels = [], [], []
        extras: dict[str, list[torch.Tensor]] = {}
        for i in sorted(members):
            input_ids, loss_mask = examples[i][0], examples[i][1]
            ids += input_ids
            pos += range(len(input_ids))
            labels += shifted_labels(input_ids, loss_mask)
            for name, values in (examples[i][2] if len(examples[i]) > 2 else {}).items():
                values = torch.as_tensor(values)
                extras.setdefault(name, []).append(torch.cat([values[1:], torch.zeros_like(values[:1])]))
        packed.append(PackedBatch(torch.tensor(ids), torch.tensor(pos), torch.tensor(labels), len(members),
                                  {name: torch.cat(parts) for name, parts in extras.items()}))
    return packed


def distribute(batches: list[PackedBatch], world_size: int, pad_id: int) -> list[list[PackedBatch]]:
    """Give every worker the same number of micro-batches (ZeRO's collectives need it), balancing tokens.

    Largest first in snake order; the count is rounded up to a multiple of `world_size` with
    empty placeholders.
    """
    batches = sorted(batches, key=lambda b: -b.num_tokens)
    # Fewer bins than a multiple of the workers (a small global batch): split the largest bin at the
    # example boundary nearest its middle rather than hand a worker an empty placeholder, so every
    # worker computes on real tokens. Exact: no attention crosses an example boundary.
    while world_size > 1 and len(batches) % world_size and batches[0].num_examples > 1:
        batches = sorted(split_at_example(batches[0]) + batches[1:], key=lambda b: -b.num_tokens)
    while len(batches) % world_size:
        batches.append(with_empty_extras(empty_batch(pad_id), batches[0]))
    shards: list[list[PackedBatch]] = [[] for _ in range(world_size)]
    for i, batch in enumerate(batches):
        lap, pos = divmod(i, world_size)
        shards[pos if lap % 2 == 0 else world_size - 1 - pos].append(batch)
    return shards


def split_at_example(batch: PackedBatch) -> list[PackedBatch]:
    """Two batches: `batch` cut at the example start (position id 0) nearest its middle."""
    starts = (batch.position_ids == 0).nonzero()[1:, 0].tolist()
    cut = min(starts, key=lambda t: abs(2 * t - batch.input_ids.numel()))
    halves = []
    for part in (slice(0, cut), slice(cut, None)):
        position_ids = batch.position_ids[part]
        halves.append(PackedBatch(batch.input_ids[part], position_ids, batch.labels[part],
                                  int((position_ids == 0).sum()), {k: v[part] for k, v in batch.extras.items()}))
    return halves
