"""vLLM backends for rollout and teacher scoring (GPU only; `pip install -e ".[gpu]"`).

Same interface as the hf workers in `rollout.py` / `teacher.py`. Imported only when a config picks
`backend: vllm`, so CPU machines never need vLLM. Written against vLLM's documented offline API:
`LLM.generate` with `SamplingParams(n=..., logprobs=0)` for sampling, `prompt_logprobs` for prefill
scoring, `LLM.collective_rpc` to load new weights into the running engine, and, colocated with
the trainer (`rollout.colocate`), sleep mode: `LLM(enable_sleep_mode=True)`, `llm.sleep(level=1)`
(weights offloaded to host memory, KV cache discarded) and `llm.wake_up()`.
"""

from __future__ import annotations

import torch

from posttrain.config import RolloutConfig, TeacherConfig
from posttrain.engines.types import Sample, Scores


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError("backend 'vllm' needs vLLM on a CUDA machine: pip install -e '.[gpu]'") from e
    if not torch.cuda.is_available():
        raise RuntimeError("backend 'vllm' needs a CUDA GPU; use backend 'hf' on a CPU")


def _load_weights(worker, weights) -> int:
    """Runs inside each vLLM worker process (sent by `collective_rpc`)."""
    worker.model_runner.model.load_weights(weights=weights)
    return len(weights)


class _SleepMode:
    """vLLM's sleep mode. Level 1 keeps the weights (in host memory), so a wake without a weight
    sync after it (evaluation, the teacher) still serves the right model."""

    @staticmethod
    def padding(cfg, model_path: str, trust_remote_code: bool, prompt_lens: list[int],
                response_lens: list[int]) -> float | None:
        """None: vLLM batches tokens, not padded rows (continuous batching)."""
        return None

    def sleep(self) -> None:
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()
        self.llm.reset_prefix_cache()  # the KV blocks were discarded while asleep


class VLLMRolloutWorker(_SleepMode):
    def __init__(self, model_path: str, cfg: RolloutConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False):
        _require_vllm()
        from vllm import LLM

        self.cfg = cfg
        self.llm = LLM(model=model_path, dtype="bfloat16", gpu_memory_utilization=cfg.gpu_memory_utilization,
                       trust_remote_code=trust_remote_code, enable_prefix_caching=True, enable_sleep_mode=sleep_mode,
                       # the log-probs of the distribution actually sampled (after temperature / top-p)
                       logprobs_mode="processed_logprobs")

    def generate(self, prompts: list[tuple[int, list[int]]], seed: int, greedy: bool = False) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if greedy:  # evaluation: one argmax response per prompt
            params = SamplingParams(n=1, temperature=0.0, max_tokens=self.cfg.max_new_tokens, logprobs=0)
        else:
            params = SamplingParams(n=self.cfg.samples_per_prompt, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                    max_tokens=self.cfg.max_new_tokens, logprobs=0, seed=seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids in prompts], params, use_tqdm=False)
        samples = []
        for (index, _), output in zip(prompts, outputs):
            for completion in output.outputs:
                ids = list(completion.token_ids)
                logps = [step[token].logprob for token, step in zip(ids, completion.logprobs)]
                samples.append(Sample(index, ids, logps, truncated=completion.finish_reason == "length"))
        return samples

    def update_weights(self, bucket_refs: list) -> int:
        import ray

        count = 0
        for ref in bucket_refs:
            bucket = ray.get(ref)
            count += self.llm.collective_rpc(_load_weights, args=(list(bucket.tensors()),))[0]
        self.llm.reset_prefix_cache()  # cached KV of the old weights is stale
        return count


class VLLMTeacherWorker(_SleepMode):
    def __init__(self, model_path: str, cfg: TeacherConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False):
        _require_vllm()
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                       trust_remote_code=trust_remote_code, enable_prefix_caching=True, enable_sleep_mode=sleep_mode)

    def score(self, sequences: list[tuple[list[int], list[int]]], topk: int = 0) -> list[Scores]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # Prefill only: one throw-away token is generated; temperature 1 for the log-probs we read.
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=topk)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p + r) for p, r in sequences], params, use_tqdm=False)
        results = []
        for (p, r), output in zip(sequences, outputs):
            positions = output.prompt_logprobs[len(p):len(p) + len(r)]  # entry i: log-probs of token i
            entry = Scores(torch.tensor([pos[token].logprob for token, pos in zip(r, positions)]))
            if topk:
                ranked = [sorted(pos.items(), key=lambda kv: kv[1].rank)[:topk] for pos in positions]
                entry.topk_ids = torch.tensor([[t for t, _ in row] for row in ranked])
                entry.topk_logprobs = torch.tensor([[lp.logprob for _, lp in row] for row in ranked])
            results.append(entry)
        return results
