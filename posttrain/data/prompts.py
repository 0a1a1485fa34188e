"""OPD prompts: the weighted prompt mixture, chat-templated for generation, with a resumable cursor."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from posttrain.config import OPDDataConfig
from posttrain.data.chat import prompt_ids
from posttrain.data.mixture import DataError, load_mixture, load_mixture_spec
from posttrain.data.stream import EpochCursor
from posttrain.infra.paths import resolve_path


@dataclass
class Prompt:
    id: str
    category: str
    input_ids: list[int]
    answer: str | None = None


class OPDPrompts:
    def __init__(self, cfg: OPDDataConfig, tokenizer, seed: int | None = None):
        spec = load_mixture_spec(resolve_path(cfg.mixture))
        # The data's order is the mixture file's `seed` (data_mixtures/README.md) unless a caller fixes another.
        seed = spec.seed if seed is None else seed
        mixture = load_mixture(spec, seed=seed)
        max_len, policy = cfg.max_prompt_len, cfg.overlong_policy

        def encode(row):
            messages = row["messages"]
            if messages[-1]["role"] == "assistant":  # a chat row: prompt with everything before the reply
                messages = messages[:-1]
            ids = prompt_ids(tokenizer, messages)
            status = "ok"
            if len(ids) > max_len:
                # Keep the end: the generation header and the question's last words matter most.
                ids, status = (ids[-max_len:], "truncated") if policy == "truncate" else ([], "overlong")
            return {"input_ids": ids, "status": status}

        encoded = mixture.map(encode, desc="tokenising OPD prompts")
        statuses = Counter(encoded["status"])
        self.truncated, self.dropped = statuses["truncated"], statuses["overlong"]
        self.dataset = encoded.filter(lambda s: s != "overlong", input_columns="status")
        self.per_category = Counter(self.dataset["category"])
        for source in spec.sources:
            category = source.category or source.name
            if self.per_category[category] == 0:
                raise DataError(f"{spec.path}: category '{category}' has no prompt within data.max_prompt_len={max_len}")
        self.cursor = EpochCursor(len(self.dataset), seed=seed, shuffle=cfg.shuffle)

    def report(self) -> str:
        cats = ", ".join(f"{k} {v}" for k, v in sorted(self.per_category.items()))
        return f"{len(self.dataset)} prompts ({cats}); {self.truncated} truncated, {self.dropped} dropped as over-long"

    def batch(self, position: int, count: int) -> list[Prompt]:
        rows = self.dataset.select(self.cursor.indices(position, count))
        return [Prompt(r["id"], r["category"], r["input_ids"], r["answer"]) for r in rows]
