"""The hf teacher worker: the active teacher's log-probs of exactly the student's tokens (prefill only).

Temperature is 1 by construction (a plain log-softmax of the teacher's logits): SGLang once
ignored the temperature of prefill log-probs silently, and a tempered teacher is a different
target. Attention-only teachers (qwen3_moe, ...) score packed rows, as the trainer trains them: no
padding, and logits only at the positions that predict a response token (`logits_to_keep`).
Others (`qwen3_next`, whose linear-attention layers carry state along a row) score right-padded
batches, which keep every real token's causal context intact for any architecture.
"""

from __future__ import annotations

import torch

from posttrain.config import TeacherConfig
from posttrain.data.packing import IGNORE, pack
from posttrain.engines.batching import length_sorted_batches, teacher_padding
from posttrain.engines.hf_engine import HFEngine
from posttrain.engines.sizing import EngineSize
from posttrain.engines.types import Scores
from posttrain.models.packed_attention import packable, register


class HFTeacherWorker(HFEngine):
    def __init__(self, model_path: str, cfg: TeacherConfig, num_threads: int, trust_remote_code: bool = False,
                 sleep_mode: bool = False, size: EngineSize = EngineSize()):
        from transformers import AutoModelForCausalLM

        super().__init__(num_threads)
        self.cfg = cfg
        dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.packed = packable(model_path, trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=trust_remote_code,
            attn_implementation=register() if self.packed else None).to(self.device).eval()

    @staticmethod
    def padding(cfg: TeacherConfig, model_path: str, trust_remote_code: bool, prompt_lens: list[int],
                response_lens: list[int]) -> float | None:
        """The pad fraction of this step's scoring: none for packed rows; right padding otherwise."""
        if packable(model_path, trust_remote_code):
            return 0.0
        pad, total = teacher_padding([p + r for p, r in zip(prompt_lens, response_lens)], cfg.batch_size, cfg.num_workers)
        return pad / max(1, total)

    @torch.no_grad()
    def score(self, sequences: list[tuple[list[int], list[int]]], topk: int = 0) -> list[Scores]:
        """Per (prompt_ids, response_ids): the log-probs [R] of the response tokens; with `topk`, also
        the ids / log-probs [R, k] of the teacher's own top-k at those positions."""
        self._check_awake()
        return self._score_packed(sequences, topk) if self.packed else self._score_padded(sequences, topk)

    def _score_packed(self, sequences: list[tuple[list[int], list[int]]], topk: int) -> list[Scores]:
        # Each token carries the index of its sequence ("owner"), so the packed row's log-probs split back.
        examples = [(p + r, [0] * len(p) + [1] * len(r), {"owner": torch.full((len(p) + len(r),), i)})
                    for i, (p, r) in enumerate(sequences)]
        k = min(topk, self.model.config.vocab_size)
        results = [Scores(torch.zeros(0), *((torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)) if topk else ()))
                   for _ in sequences]  # what an empty response gets
        budget = max(self.cfg.pack_tokens, max(len(ids) for ids, _, _ in examples))
        for row in pack(examples, budget):
            keep_R = (row.labels != IGNORE).nonzero()[:, 0]  # positions that predict a response token
            if keep_R.numel() == 0:
                continue
            logits_RV = self.model(input_ids=row.input_ids[None].to(self.device),
                                   position_ids=row.position_ids[None].to(self.device),
                                   logits_to_keep=keep_R.to(self.device), use_cache=False).logits[0].float()
            logp_RV = torch.log_softmax(logits_RV, dim=-1)
            parts = {"logprobs": logp_RV.gather(-1, row.labels[keep_R].to(self.device)[:, None])[:, 0].cpu()}
            if topk:
                values, indices = logp_RV.topk(k, dim=-1)
                parts.update(topk_ids=indices.cpu(), topk_logprobs=values.cpu())
            owners, counts = torch.unique_consecutive(row.extras["owner"][keep_R], return_counts=True)
            for name, values in parts.items():
                for owner, chunk in zip(owners.tolist(), values.split(counts.tolist())):
                    setattr(results[owner], name, chunk)
        return results

    def _score_padded(self, sequences: list[tuple[list[int], list[int]]], topk: int) -> list[Scores]:
        results: list[Scores] = [None] * len(sequences)  # type: ignore[list-item]
        for batch in length_sorted_batches([len(p) + len(r) for p, r in sequences], self.cfg.batch_size):
            chunk = [sequences[i] for i in batch]
            width = max(len(p) + len(r) for p, r in chunk)
            input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (p, r) in enumerate(chunk):
                input_ids[row, :len(p) + len(r)] = torch.tensor(p + r)
                attention_mask[row, :len(p) + len(r)] = 1
            logits_BTV = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                    use_cache=False).logits.float()
            for row, (p, r) in enumerate(chunk):
                # Position t predicts token t+1: the response's tokens are predicted at len(p)-1 ...
                logp_RV = torch.log_softmax(logits_BTV[row, len(p) - 1:len(p) + len(r) - 1], dim=-1)
                entry = Scores(logp_RV.gather(-1, torch.tensor(r, device=logp_RV.device)[:, None])[:, 0].cpu())
                if topk:
                    values, indices = logp_RV.topk(min(topk, logp_RV.shape[-1]), dim=-1)
                    entry.topk_ids, entry.topk_logprobs = indices.cpu(), values.cpu()
                results[batch[row]] = entry
        return results
