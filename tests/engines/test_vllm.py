"""The vLLM backends against the hf ones, on the tiny suite. These need vLLM and a CUDA GPU; elsewhere
they are skipped with that reason (a skip is not a pass)."""

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install -e '.[gpu]' on a CUDA machine)"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM backends need a CUDA GPU"),
]


def test_vllm_teacher_scores_equal_the_hf_teacher(tiny_models, tokenizer):
    from posttrain.config import TeacherConfig
    from posttrain.engines.hf_teacher import HFTeacherWorker
    from posttrain.engines.vllm import VLLMTeacherWorker

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True)
    response = tokenizer.encode("2 plus 3 is 5.", add_special_tokens=False)
    cfg = TeacherConfig(dtype="float32", gpu_memory_utilization=0.3)
    hf = HFTeacherWorker(str(tiny_models["teacher-moe"]), cfg, 1).score([(prompt, response)], topk=5)[0]
    vllm = VLLMTeacherWorker(str(tiny_models["teacher-moe"]), cfg, 1).score([(prompt, response)], topk=5)[0]
    assert torch.allclose(hf.logprobs, vllm.logprobs, atol=2e-2)
    assert torch.equal(hf.topk_ids[:, 0], vllm.topk_ids[:, 0])


def test_vllm_rollout_samples_and_takes_new_weights(tiny_models, tokenizer, ray_local):
    import ray
    from transformers import AutoModelForCausalLM

    from posttrain.config import RolloutConfig
    from posttrain.engines.vllm import VLLMRolloutWorker
    from posttrain.infra.weight_buckets import buckets

    cfg = RolloutConfig(backend="vllm", samples_per_prompt=2, max_new_tokens=8, gpu_memory_utilization=0.3)
    worker = VLLMRolloutWorker(str(tiny_models["student"]), cfg, 1)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    samples = worker.generate([(0, prompt)], seed=0)
    assert len(samples) == 2 and all(len(s.response_ids) == len(s.sampler_logprobs) > 0 for s in samples)
    assert all(lp <= 0 for s in samples for lp in s.sampler_logprobs)
    changed = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(0.5)
    refs = [ray.put(b) for b in buckets(changed.state_dict(), 1)]
    assert worker.update_weights(refs) > 0


def test_vllm_rollout_sleeps_frees_the_device_and_wakes_with_its_weights(tiny_models, tokenizer):
    """Colocated OPD's sleep mode: asleep, the engine's device memory is returned; awake, it samples as before."""
    from posttrain.config import RolloutConfig
    from posttrain.engines.vllm import VLLMRolloutWorker

    cfg = RolloutConfig(backend="vllm", max_new_tokens=8, gpu_memory_utilization=0.3, colocate=True)
    worker = VLLMRolloutWorker(str(tiny_models["student"]), cfg, 1, sleep_mode=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    before = worker.generate([(0, prompt)], seed=0, greedy=True)
    used_awake = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    worker.sleep()
    used_asleep = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    assert used_asleep < used_awake - 0.1 * torch.cuda.mem_get_info()[1]  # the KV cache (>= 10% of the device) left
    worker.wake_up()
    assert worker.generate([(0, prompt)], seed=0, greedy=True)[0].response_ids == before[0].response_ids
