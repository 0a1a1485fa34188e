"""The SFT stage's data: mixture → chat template with assistant mask → length policy → packed steps."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from posttrain.config import DataConfig
from posttrain.data.chat import fit_to_length, tokenize_conversation
from posttrain.data.mixture import DataError, load_mixture, load_mixture_spec
from posttrain.data.packing import PackedBatch, pack
from posttrain.data.stream import EpochCursor
from posttrain.infra.paths import resolve_path


@dataclass
class DataReport:
    examples: int = 0  # rows drawn from the mixture
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0  # after truncation no assistant token was left
    per_source: dict | None = None

    def line(self) -> str:
        return (f"{self.kept}/{self.examples} examples kept; {self.truncated} truncated, "
                f"{self.dropped_overlong} dropped as over-long, {self.dropped_no_target} dropped with no target left")


class SFTData:
    """Tokenised, length-checked SFT examples with a resumable epoch cursor."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int | None = None):
        if cfg.pack_tokens < cfg.max_seq_len:
            raise DataError(f"data.pack_tokens ({cfg.pack_tokens}) must be >= data.max_seq_len ({cfg.max_seq_len})")
        spec = load_mixture_spec(resolve_path(cfg.mixture))
        # The data's order is the mixture file's `seed` (data_mixtures/README.md) unless a caller fixes another.
        seed = spec.seed if seed is None else seed
        mixture = load_mixture(spec, seed=seed)
        for i, messages in enumerate(mixture["messages"]):
            if not any(m["role"] == "assistant" for m in messages):
                row = mixture[i]
                raise DataError(f"{spec.path}: source '{row['source']}' example '{row['id']}' has no assistant turn; "
                                "SFT needs at least one (use the OPD stage for prompt-only data)")

        max_len, policy = cfg.max_seq_len, cfg.overlong_policy

        def encode(row):
            example = tokenize_conversation(tokenizer, row["messages"])
            fitted = fit_to_length(example, max_len, policy)
            over = len(example.input_ids) > max_len
            return {
                "input_ids": fitted.input_ids if fitted else [],
                "loss_mask": fitted.loss_mask if fitted else [],
                "status": "ok" if not over else ("truncated" if fitted else ("overlong" if policy == "drop" else "no_target")),
            }

        encoded = mixture.map(encode, num_proc=cfg.num_proc if cfg.num_proc > 1 else None,
                              desc="tokenising SFT mixture")
        statuses = encoded["status"]
        self.report = DataReport(
            examples=len(statuses),
            truncated=statuses.count("truncated"),
            dropped_overlong=statuses.count("overlong"),
            dropped_no_target=statuses.count("no_target"),
        )
        self.dataset = encoded.filter(lambda s: s in ("ok", "truncated"), input_columns="status")
        self.report.kept = len(self.dataset)
        self.report.per_source = dict(sorted(Counter(self.dataset["source"]).items()))
        if self.report.kept == 0:
            raise DataError(f"{spec.path}: no example is left after the length policy ({self.report.line()})")
        self.cursor = EpochCursor(len(self.dataset), seed=seed, shuffle=cfg.shuffle)
        self.pack_tokens = cfg.pack_tokens

    def __len__(self) -> int:
        return len(self.dataset)

    def steps(self, global_batch_size: int, epochs: float, max_steps: int) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(epochs * len(self) / global_batch_size))

    def batch(self, position: int, count: int) -> list[PackedBatch]:
        """The `count` examples after `position`, packed into micro-batches."""
        rows = self.dataset.select(self.cursor.indices(position, count))
        return pack(list(zip(rows["input_ids"], rows["loss_mask"])), self.pack_tokens)
