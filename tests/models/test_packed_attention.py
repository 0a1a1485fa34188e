"""`sdpa_packed`: a packed row's logits and gradients equal plain sdpa's, at the examples' cost."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.models.packed_attention import register, segments


def packed_row(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (1, sum(lengths)), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, positions


def forward_backward(model, ids, positions):
    model.zero_grad()
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    logits.square().mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_segments_start_at_every_position_restart_and_every_row():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert segments(positions) == ((0, 3), (3, 2), (5, 1), (6, 4), (10, 2))


def test_packed_rows_match_dense_block_mask_sdpa_in_logits_and_gradients(tiny_models):
    register()
    dense = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa")
    packed = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa_packed")
    # Lengths across several power-of-two buckets, a one-token example, a long one.
    ids, positions = packed_row([37, 5, 1, 130, 64, 65, 12, 33])
    logits_a, grads_a = forward_backward(dense, ids, positions)
    logits_b, grads_b = forward_backward(packed, ids, positions)
    torch.testing.assert_close(logits_b, logits_a, atol=2e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-4)


def test_each_example_in_a_row_scores_as_it_does_alone(tiny_models):
    register()
    packed = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa_packed").eval()
    alone = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa").eval()
    lengths = [20, 3, 41]
    ids, positions = packed_row(lengths, seed=1)
    with torch.no_grad():
        row = packed(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        start = 0
        for n in lengths:
            single = alone(input_ids=ids[:, start:start + n]).logits[0]
            torch.testing.assert_close(row[start:start + n], single, atol=2e-5, rtol=0)
            start += n


def test_generation_with_a_kv_cache_is_refused_with_the_reason(tiny_models):
    register()
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa_packed").eval()
    with pytest.raises(NotImplementedError, match="sdpa_packed.*without a KV cache"):
        model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False)


def test_a_forward_reads_the_segments_once_not_once_per_layer(tiny_models, monkeypatch):
    """Issue 24 row 12: reading the segments is a `.tolist()` (a device sync on a GPU) and the plan a set of
    host-to-device copies; they happen once per forward (and not again in the backward), not per layer.
    Changed position ids are read again."""
    import posttrain.models.packed_attention as packed_attention

    register()
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation="sdpa_packed")
    assert model.config.num_hidden_layers >= 2
    reads = []
    monkeypatch.setattr(packed_attention, "segments", lambda p: reads.append(1) or segments(p))
    ids, positions = packed_row([20, 3, 41])
    logits, _ = forward_backward(model, ids, positions)
    assert len(reads) == 1
    _, other = packed_row([40, 24], seed=1)
    other_logits, _ = forward_backward(model, ids, other)
    assert len(reads) == 2 and not torch.equal(other_logits, logits)
    positions[0, 20:23] = torch.tensor([0, 1, 0])  # the same tensor changed in place: read again, as 4 examples
    forward_backward(model, ids, positions)
    assert len(reads) == 3
