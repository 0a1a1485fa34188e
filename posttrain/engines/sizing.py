"""How big each inference engine is, from the run's config (vLLM needs it said; hf ignores what it needn't).

- `tensor_parallel`: the group's devices per engine (`rollout|teacher.gpus_per_worker`): Qwen3-Next-80B's
  bf16 weights alone are ~160 GB, so a teacher engine spans 4+ GPUs.
- `max_model_len`: the longest sequence the run can make, prompt budget + response budget; without
  it vLLM sizes for the model's own context (262k for Qwen3-30B-A3B), which one GPU's KV budget refuses.
  A teacher scores a whole prompt + response and generates one throw-away token: one more.
- `max_logprobs`: vLLM refuses more log-probs per position than this (default 20): the teacher's
  top-k (`loss.topk`) where the loss asks for it.
- `max_num_seqs`: the sequences one engine holds at once: its share of a step's samples.
- `dtype`: the rollout samples in the dtype the trainer computes in (`trainer_dtype`: bf16 under DeepSpeed's
  bf16 whatever `model.dtype` loads), so the importance ratio starts at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from posttrain.config import OPDConfig
from posttrain.losses import LOSSES

VLLM_DEFAULT_MAX_LOGPROBS = 20


@dataclass(frozen=True)
class EngineSize:
    tensor_parallel: int = 1
    max_model_len: int = 0  # 0: the model's own context length
    max_logprobs: int = VLLM_DEFAULT_MAX_LOGPROBS
    max_num_seqs: int = 0  # 0: the engine's default
    dtype: str = ""  # "": the group's own (teacher.dtype) or the model's
    max_num_batched_tokens: int = 0  # 0: vLLM's default (16,384 for LLM); teachers: teacher.max_num_batched_tokens


# Per prefill token and vocabulary entry, what a prompt log-prob request holds at once: the logits (bf16) and
# their fp32 log-softmax (vLLM's sampler, computed on every tensor-parallel rank from gathered logits).
PROMPT_LOGPROB_BYTES = 2 + 4
VLLM_LLM_BATCHED_TOKENS = 16384


def prompt_logprob_peak_bytes(size: EngineSize, vocab: int) -> int:
    """A teacher engine's memory for prompt log-probs, on every GPU of the engine, outside vLLM's profile."""
    return (size.max_num_batched_tokens or VLLM_LLM_BATCHED_TOKENS) * vocab * PROMPT_LOGPROB_BYTES


def utilization_beside(utilization: float, peak_bytes: int, device_bytes: int) -> float:
    """The gpu_memory_utilization to start an engine with so that `peak_bytes` vLLM does not profile still fits
    on the device beside what it reserves (a mid-run OOM otherwise)."""
    lowered = utilization - peak_bytes / device_bytes
    if lowered < 0.1:
        raise ValueError(f"gpu_memory_utilization {utilization} leaves no room for the prompt log-probs' "
                         f"{peak_bytes / 2**30:.1f} GiB on a {device_bytes / 2**30:.0f} GiB device: lower "
                         "teacher.max_num_batched_tokens or raise the tensor parallel")
    return lowered


def trainer_dtype(cfg: OPDConfig) -> str:
    """The dtype the trainer's forward runs in: DeepSpeed's bf16 casts the module whatever `model.dtype` loaded."""
    return "bfloat16" if cfg.deepspeed.bf16 else cfg.model.dtype


def rollout_size(cfg: OPDConfig) -> EngineSize:
    samples = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    return EngineSize(tensor_parallel=max(1, cfg.rollout.gpus_per_worker),
                      max_model_len=cfg.data.max_prompt_len + cfg.rollout.max_new_tokens,
                      max_num_seqs=math.ceil(samples / cfg.rollout.num_workers), dtype=trainer_dtype(cfg))


def teacher_topk(cfg: OPDConfig) -> int:
    """The teacher's top-k log-probs per position that the loss needs, for itself or its metrics (0: none)."""
    return cfg.loss.topk if LOSSES[cfg.loss.mode].configured(cfg.loss).needs_teacher_topk else 0


def teacher_size(cfg: OPDConfig) -> EngineSize:
    topk = teacher_topk(cfg) if cfg.loss.mode in LOSSES else 0  # an unknown mode is refused by the checks
    samples = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    return EngineSize(tensor_parallel=max(1, cfg.teacher.gpus_per_worker),
                      max_model_len=cfg.data.max_prompt_len + cfg.rollout.max_new_tokens + 1,
                      max_logprobs=max(VLLM_DEFAULT_MAX_LOGPROBS, topk),
                      max_num_seqs=math.ceil(samples / cfg.teacher.num_workers), dtype=cfg.teacher.dtype,
                      max_num_batched_tokens=cfg.teacher.max_num_batched_tokens)


def resume_caveat(cfg: OPDConfig) -> str:
    """What a resumed run repeats of the uninterrupted one's sampling ('' where it repeats every token).

    Every prompt has its own seed, so on a CPU (the hf sampler, and vLLM's in-process CPU engine) a resumed
    or redone step samples the same tokens: the resume tests compare runs to the bit. On a GPU the same seeds
    do not give the same tokens: vLLM's multiprocess engine, CUDA graphs and kernels whose reductions depend
    on what else is batched (and the hf sampler's, batch-shaped too) change the low bits, and a sample
    diverges at the first token those bits flip."""
    on_gpu = cfg.rollout.gpus_per_worker > 0 or (cfg.rollout.colocate and cfg.trainer.gpus_per_worker > 0)
    if not on_gpu:
        return ""
    return ("the resumed steps draw the same prompts with the same seeds, but on a GPU the engines' batch-dependent "
            "kernels make the sampled tokens differ from an uninterrupted run's (the same distribution, not the same bits)")

