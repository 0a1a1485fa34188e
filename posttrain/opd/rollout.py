"""RolloutGroup: sample `samples_per_prompt` responses per prompt from the current student.

Returns, per sample, the response token ids, the sampler's log-prob of each (under the exact
distribution it sampled from: after temperature and top-p), and whether it ran out of tokens.
Backends: `hf` (a transformers model decoding with its KV cache, batched, left-padded, through
`posttrain.opd.sampling`; CPU or GPU) and `vllm` (GPU, imported only when chosen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.cluster import Restarts, call_all, release, reserve, spawn, torch_threads
from posttrain.config import RolloutConfig
from posttrain.opd.batching import length_sorted_batches, shard
from posttrain.opd.sampling import sample


@dataclass
class Sample:
    prompt_index: int
    response_ids: list[int]
    sampler_logprobs: list[float]
    truncated: bool  # stopped by max_new_tokens, not by an end token


class Sleepable:
    """An hf worker's `sleep`/`wake_up` (the vLLM workers' are vLLM's sleep mode): asleep, the weights
    wait in host memory and the device's cached blocks are returned, so a colocated trainer can use them.
    On a CPU the host is the device: nothing moves, but the protocol is the same and is checked."""

    asleep = False

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self.asleep = True

    def wake_up(self) -> None:
        self.model.to(self.device)
        self.asleep = False

    def _check_awake(self) -> None:
        if self.asleep:
            raise RuntimeError(f"{type(self).__name__} was called while asleep; wake_up() first")


class HFRolloutWorker(Sleepable):
    def __init__(self, model_path: str, cfg: RolloutConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from posttrain.metrics import quiet_library_progress

        quiet_library_progress()
        torch.set_num_threads(num_threads)
        self.cfg = cfg
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code).to(self.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def update_weights(self, bucket_refs: list) -> int:
        import ray

        from posttrain.train.weights import load_bucket

        self._check_awake()
        return sum(load_bucket(self.model, ray.get(ref)) for ref in bucket_refs)

    def state_dict(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def generate(self, prompts: list[tuple[int, list[int]]], seed: int, greedy: bool = False) -> list[Sample]:
        """`prompts`: (prompt_index, token ids); each is sampled `samples_per_prompt` times
        (`greedy`: once, by argmax — evaluation)."""
        self._check_awake()
        cfg = self.cfg
        generator = torch.Generator(device=self.device).manual_seed(seed)
        jobs = [(index, ids) for index, ids in prompts for _ in range(1 if greedy else cfg.samples_per_prompt)]
        samples: list[Sample] = [None] * len(jobs)  # type: ignore[list-item]  # in job order, whatever the batching
        for batch in length_sorted_batches([len(ids) for _, ids in jobs], cfg.batch_size):
            chunk = [jobs[i] for i in batch]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention_mask[row, width - len(ids):] = 1
            new_BN, logp_BN = sample(self.model, input_ids.to(self.device), attention_mask.to(self.device),
                                     cfg.max_new_tokens, sorted(self.eos_ids), self.pad_id, temperature=cfg.temperature,
                                     top_p=cfg.top_p, greedy=greedy, generator=generator)
            for row, (index, _) in enumerate(chunk):
                ids, logps = [], []
                for token, logp in zip(new_BN[row].tolist(), logp_BN[row].tolist()):
                    ids.append(token)
                    logps.append(logp)
                    if token in self.eos_ids:
                        break
                samples[batch[row]] = Sample(index, ids, logps, truncated=ids[-1] not in self.eos_ids)
        return samples


def start_engines(name: str, worker_cls, model_path: str, cfg, trust_remote_code: bool, share) -> tuple[list, object]:
    """The rollout's or a teacher's actors (`cfg`: its RolloutConfig / TeacherConfig) and their
    placement group; with `share` (posttrain.opd.colocate) they go into the trainer's bundles, the
    placement is None (not theirs to release) and the engines are built able to sleep."""
    if share is None:
        cpus, gpus = cfg.cpus_per_worker, cfg.gpus_per_worker
        placement = reserve(name, cfg.num_workers, cpus, gpus, cfg.placement)
    else:
        cpus, gpus, placement = share.cpus, share.gpus, None
    workers = spawn(worker_cls, share.placement if share else placement, cpus, gpus,
                    lambda i: (model_path, cfg, torch_threads(cfg.threads_per_worker, cpus), trust_remote_code,
                               share is not None),
                    count=cfg.num_workers, max_restarts=cfg.max_restarts)
    return workers, placement


class RolloutGroup:
    def __init__(self, model_path: str, cfg: RolloutConfig, trust_remote_code: bool = False, share=None):
        """`share`: bundles shared with the trainer (`posttrain.opd.colocate`); the engines can sleep."""
        self.cfg = cfg
        if cfg.backend == "vllm":
            from posttrain.opd.vllm_backend import VLLMRolloutWorker as worker_cls
        else:
            worker_cls = HFRolloutWorker
        self.workers, self.placement = start_engines("rollout", worker_cls, model_path, cfg, trust_remote_code, share)
        # Where a restarted worker gets the current student weights (its constructor loads the
        # initial ones): set by the OPD loop to the trainer's weight buckets; None = the initial ones.
        self.weights_source = None
        self.restarts = Restarts("rollout", cfg.max_restarts, "rollout.max_restarts", on_restart=self._resync)

    def _resync(self, worker) -> None:
        import ray

        if self.weights_source is not None:
            ray.get(worker.update_weights.remote(self.weights_source()))

    def generate(self, prompt_ids: list[list[int]], seed: int, greedy: bool = False) -> list[Sample]:
        indexed = list(enumerate(prompt_ids))
        shards = shard(indexed, len(self.workers))
        results = self.restarts.run(self.workers, "generate",
                                    [(i, (shard, seed * 1000 + i, greedy)) for i, shard in enumerate(shards) if shard])
        samples = [s for part in results for s in part]
        return sorted(samples, key=lambda s: s.prompt_index)  # stable: samples of a prompt keep their order

    def update_weights(self, bucket_refs: list) -> None:
        call_all(self.workers, "update_weights", bucket_refs)

    def sleep(self) -> None:
        call_all(self.workers, "sleep")

    def wake_up(self) -> None:
        call_all(self.workers, "wake_up")

    def shutdown(self) -> None:
        release(self.workers, self.placement)
