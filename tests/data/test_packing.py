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
