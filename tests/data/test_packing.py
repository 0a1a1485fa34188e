import torch
from transformers import AutoModelForCausalLM

from posttrain.data.packing import IGNORE, distribute, pack


def test_packed_forward_equals_separate_forwards(tiny_models):
    """Position ids restart per example and attention never crosses examples."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(10, 400, (n,), generator=g).tolist() for n in (7, 12, 5)]
    [batch] = pack([(ids, [1] * len(ids)) for ids in examples], budget=64)
    assert batch.num_tokens == 24 and batch.position_ids.tolist()[:7] == list(range(7))
    with torch.no_grad():
        # use_cache=False as in training: transformers only reads packed position ids without a KV cache.
        packed = model(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None],
                       use_cache=False).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([ids])).logits[0] for ids in examples])
    assert torch.allclose(packed, separate, atol=1e-5)


def test_labels_are_shifted_within_each_example_and_masked():
    [batch] = pack([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])], budget=8)
    assert batch.input_ids.tolist() == [1, 2, 3, 4, 5]
    assert batch.labels.tolist() == [2, 3, IGNORE, 5, IGNORE]  # never predicts across the boundary


def test_bins_respect_budget_and_workers_get_equal_counts():
    examples = [([7] * n, [1] * n) for n in (900, 800, 300, 200, 100, 50)]
    batches = pack(examples, budget=1024)
    assert all(b.num_tokens <= 1024 for b in batches)
    assert sum(b.num_examples for b in batches) == 6 and sum(b.num_tokens for b in batches) == 2350
    shards = distribute(batches, world_size=2, pad_id=0)
    assert len(shards[0]) == len(shards[1])
    assert sum(b.num_examples for s in shards for b in s) == 6


def test_a_small_batch_is_split_at_example_boundaries_so_no_worker_idles():
    examples = [([t] * n, [0] + [1] * (n - 1), {"w": torch.arange(n, dtype=torch.float)}) for t, n in
                ((3, 40), (4, 30), (5, 20), (6, 10))]
    [whole] = pack(examples, budget=1024)
    shards = distribute([whole], world_size=2, pad_id=0)
    assert [len(s) for s in shards] == [1, 1]
    halves = [s[0] for s in shards]
    assert all(h.num_examples >= 1 and h.num_tokens > 0 for h in halves)  # no placeholder
    # The halves are the whole batch cut where an example starts: every token, label and extra kept.
    in_order = sorted(halves, key=lambda h: h.input_ids[0].item())  # the bin holds the examples in order
    for field in ("input_ids", "position_ids", "labels"):
        assert torch.equal(torch.cat([getattr(h, field) for h in in_order]), getattr(whole, field))
    assert torch.equal(torch.cat([h.extras["w"] for h in in_order]), whole.extras["w"])
    assert sum(h.num_loss_tokens for h in halves) == whole.num_loss_tokens
