"""The hf rollout's sampler: exact draws, exact sampler log-probs, greedy equal to transformers' generate."""

import math

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from posttrain.engines.sampling import draw, sample


def test_draw_follows_the_distribution_and_never_draws_a_zero_probability_token():
    p = torch.tensor([0.05, 0.0, 0.4, 0.25, 0.0, 0.3])
    logp = p.log().expand(200_000, -1)
    counts = torch.bincount(draw(logp, torch.Generator().manual_seed(0)), minlength=6).double() / 200_000
    assert counts[1] == 0 and counts[4] == 0
    assert (counts - p.double()).abs().max() < 0.005, counts  # ~4 standard errors at 200k draws


def left_padded(prompts, pad_id):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


PROMPTS = [[11, 12, 13, 14, 15, 16, 17], [21, 22], [31, 32, 33, 34]]


def test_sampler_log_probs_are_the_tempered_top_p_log_probs_of_the_drawn_tokens(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"]).eval()
    ids, mask = left_padded(PROMPTS, pad_id=0)
    tokens, logps = sample(model, ids, mask, max_new_tokens=12, eos_ids=[], pad_id=0, temperature=0.7, top_p=0.9,
                           generator=torch.Generator().manual_seed(3))
    assert tokens.shape == logps.shape == (3, 12)
    for row, prompt in enumerate(PROMPTS):  # each sequence alone, no cache, no padding: the reference
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + tokens[row].tolist()])).logits[0, len(prompt) - 1:-1]
        scores = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.7)(None, logits))
        expected = torch.log_softmax(scores, dim=-1).gather(-1, tokens[row][:, None])[:, 0]
        torch.testing.assert_close(logps[row], expected, atol=1e-4, rtol=0)
        assert all(math.isfinite(x) for x in logps[row].tolist())  # never a token top-p removed


def test_greedy_decoding_equals_transformers_generate_and_stops_rows_at_their_end_token(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"]).eval()
    ids, mask = left_padded(PROMPTS, pad_id=0)
    reference = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                               eos_token_id=[2], pad_token_id=0)[:, ids.shape[1]:]
    tokens, _ = sample(model, ids, mask, max_new_tokens=10, eos_ids=[2], pad_id=0, greedy=True)
    assert torch.equal(tokens, reference[:, :tokens.shape[1]])
    if tokens.shape[1] < 10:  # every row ended early: generate padded the rest
        assert (reference[:, tokens.shape[1]:] == 0).all()


def test_the_same_seed_draws_the_same_samples(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"]).eval()
    ids, mask = left_padded(PROMPTS, pad_id=0)
    run = lambda seed: sample(model, ids, mask, 8, [2], 0, generator=torch.Generator().manual_seed(seed))[0]  # noqa: E731
    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
