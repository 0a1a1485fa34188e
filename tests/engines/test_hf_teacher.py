"""Teacher scoring: packed rows (attention-only teachers) give the padded batches' log-probs exactly."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import TeacherConfig
from posttrain.engines.hf_teacher import HFTeacherWorker


def sequences(count=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        prompt = torch.randint(5, 500, (int(torch.randint(3, 30, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(5, 500, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        out.append((prompt, response))
    out.append(([7, 8, 9], []))  # an empty response: nothing to score, still an entry
    return out


@pytest.mark.parametrize("topk", [0, 5])
def test_packed_teacher_scores_equal_padded_scores(tiny_models, topk):
    seqs = sequences()
    worker = HFTeacherWorker(str(tiny_models["teacher-moe"]), TeacherConfig(pack_tokens=64, batch_size=3), 1)
    assert worker.packed  # qwen3_moe: attention only
    packed = worker.score(seqs, topk=topk)  # 64-token rows: several rows, examples side by side in each
    padded = worker._score_padded(seqs, topk=topk)
    for (prompt, response), a, b in zip(seqs, packed, padded):
        assert a.logprobs.shape == (len(response),)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        if topk:
            assert torch.equal(a.topk_ids, b.topk_ids)
            torch.testing.assert_close(a.topk_logprobs, b.topk_logprobs, atol=1e-5, rtol=0)


def test_packed_scores_are_the_full_models_log_probs_of_each_sequence_alone(tiny_models):
    """The reference: the teacher run on each sequence by itself with plain sdpa."""
    seqs = sequences(count=4, seed=1)[:4]
    worker = HFTeacherWorker(str(tiny_models["teacher-moe"]), TeacherConfig(pack_tokens=256), 1)
    reference = AutoModelForCausalLM.from_pretrained(tiny_models["teacher-moe"], attn_implementation="sdpa").eval()
    for (prompt, response), got in zip(seqs, worker.score(seqs)):
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([prompt + response])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        expected = logp.gather(-1, torch.tensor(response)[:, None])[:, 0]
        torch.testing.assert_close(got.logprobs, expected, atol=1e-5, rtol=0)


def test_a_linear_attention_teacher_is_scored_padded(tiny_models):
    worker = HFTeacherWorker(str(tiny_models["teacher-next"]), TeacherConfig(), 1)
    assert not worker.packed  # qwen3_next's recurrent layers would carry state across packed examples
