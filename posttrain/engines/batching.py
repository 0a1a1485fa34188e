"""Length-sorted batches for the padded paths (hf generation, hf teacher scoring of teachers that
cannot be packed), and their padding.

Training and attention-only teachers are padding-free (`posttrain.data.packing`,
`posttrain.models.packed_attention`); generation left-pads prompts and keeps decoding finished rows
until the batch's longest response ends, and a teacher like `qwen3_next` (whose linear-attention
layers carry state along a packed row) right-pads. Sorting by length before cutting batches puts
similar lengths together, which is most of what padding costs.
"""

from __future__ import annotations


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most `batch_size`.

    Stable (equal lengths keep their order), so the samples of one prompt stay in order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def shard(items: list, num_workers: int) -> list[list]:
    """Round-robin shards: how the rollout and teacher groups split work between their workers (and
    so how the pad fractions below are counted)."""
    return [items[i::num_workers] for i in range(num_workers)]


def teacher_padding(lengths: list[int], batch_size: int, num_workers: int) -> tuple[int, int]:
    """(pad positions, all positions) the teacher group computes for sequences of these lengths."""
    pad = total = 0
    for part in shard(lengths, num_workers):
        for batch in length_sorted_batches(part, batch_size):
            width = max(part[i] for i in batch)
            total += width * len(batch)
            pad += sum(width - part[i] for i in batch)
    return pad, total


def rollout_padding(prompt_lens: list[int], response_lens: list[int], batch_size: int, num_workers: int,
                    samples_per_prompt: int) -> tuple[int, int]:
    """(pad positions, all positions) of hf generation: left padding plus decoding past each row's end."""
    pad = total = 0
    jobs = list(zip(prompt_lens, response_lens))
    per_prompt = [jobs[i:i + samples_per_prompt] for i in range(0, len(jobs), samples_per_prompt)]
    for part in shard(per_prompt, num_workers):
        flat = [job for group in part for job in group]
        for batch in length_sorted_batches([p for p, _ in flat], batch_size):
            prompt_width = max(flat[i][0] for i in batch)
            decode_width = max(flat[i][1] for i in batch)
            total += (prompt_width + decode_width) * len(batch)
            pad += sum(prompt_width - flat[i][0] + decode_width - flat[i][1] for i in batch)
    return pad, total
