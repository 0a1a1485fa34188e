"""The hf rollout worker: sample `samples_per_prompt` responses per prompt from the current student.

Returns, per sample, the response token ids, the sampler's log-prob of each (under the exact
distribution it sampled from: after temperature and top-p), and whether it ran out of tokens. A
transformers model decodes with its KV cache, batched, left-padded, through
`posttrain.engines.sampling`; CPU or GPU.
"""

from __future__ import annotations

import torch

from posttrain.config import RolloutConfig
from posttrain.engines.batching import length_sorted_batches, rollout_padding
from posttrain.engines.hf_engine import HFEngine
from posttrain.engines.sampling import sample
from posttrain.engines.sizing import EngineSize
from posttrain.engines.types import Sample
from posttrain.infra import faults
from posttrain.infra.weight_buckets import load_tensors, received
from posttrain.models.end_of_turn import end_of_turn_ids


class HFRolloutWorker(HFEngine):
    def __init__(self, model_path: str, cfg: RolloutConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False, size: EngineSize = EngineSize()):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(num_threads)
        self.cfg = cfg
        dtype = getattr(torch, size.dtype) if size.dtype else "auto"  # the trainer's compute dtype (engines.sizing)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                          trust_remote_code=trust_remote_code).to(self.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.eos_ids = end_of_turn_ids(self.model.generation_config, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @staticmethod
    def padding(cfg: RolloutConfig, model_path: str, trust_remote_code: bool, prompt_lens: list[int],
                response_lens: list[int]) -> float | None:
        """The pad fraction of this step's generation: left padding plus decoding past each row's end."""
        pad, total = rollout_padding(prompt_lens, response_lens, cfg.batch_size, cfg.num_workers, cfg.samples_per_prompt)
        return pad / max(1, total)

    # The weight sync, in vLLM's weight-transfer protocol (posttrain.train.weight_stream.send_weights).
    def start_weight_update(self) -> None:
        self._check_awake()
        self.received: set[str] = set()

    def update_weights(self, info: dict) -> int:
        """Copy one bucket (`posttrain.infra.weight_buckets.update_info`) into the model in place."""
        with received(info) as named:
            names = load_tensors(self.model, named)
        self.received.update(names)
        return len(names)

    def finish_weight_update(self) -> None:
        """Every parameter must have been sent: one that was not would silently keep its old value."""
        missing = sorted({name for name, _ in self.model.named_parameters()} - self.received)
        if missing:
            raise RuntimeError(f"weight sync: {len(missing)} parameter(s) of the rollout model were not sent, "
                               f"e.g. {missing[:5]}")

    def state_dict(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def generate(self, prompts: list[tuple[int, list[int]]], seed: int, greedy: bool = False) -> list[Sample]:
        """`prompts`: (prompt_index, token ids); each is sampled `samples_per_prompt` times
        (`greedy`: once, by argmax — evaluation)."""
        self._check_awake()
        cfg = self.cfg
        generator = torch.Generator(device=self.device).manual_seed(seed)
        # The `sampler_temperature` test fault: this call samples hotter than the config says (posttrain check).
        temperature = cfg.temperature * (1.5 if not greedy and faults.fires_on_call("sampler_temperature") else 1.0)
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
                                     cfg.max_new_tokens, sorted(self.eos_ids), self.pad_id, temperature=temperature,
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
