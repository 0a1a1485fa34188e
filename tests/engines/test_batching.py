"""Length-sorted batching of the padded paths, and the pad fractions the OPD metrics report."""

from posttrain.engines.batching import length_sorted_batches, rollout_padding, teacher_padding


def test_batches_cover_every_index_once_longest_first():
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [1, 3, 5]  # stable: the two 9s keep their order
    assert all(len(b) <= 3 for b in batches)


def test_sorting_cuts_teacher_padding():
    lengths = [10, 100, 12, 98, 11, 101, 9, 99]
    pad, total = teacher_padding(lengths, batch_size=4, num_workers=1)
    assert total - pad == sum(lengths)  # every real token is counted once
    unsorted_pad = sum(max(lengths[i:i + 4]) * 4 - sum(lengths[i:i + 4]) for i in (0, 4))
    assert pad < unsorted_pad / 10


def test_rollout_padding_counts_left_pad_and_decoding_past_the_end():
    # One batch: prompts 5 and 3 tokens, responses 2 and 4 tokens -> width 5 + 4 per row.
    pad, total = rollout_padding([5, 3], [2, 4], batch_size=2, num_workers=1, samples_per_prompt=1)
    assert total == 2 * 9
    assert pad == (0 + 2) + (2 + 0)
