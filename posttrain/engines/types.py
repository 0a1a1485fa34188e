"""What engines return: a rollout `Sample`, and a teacher's `Scores` of one sample's response."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    prompt_index: int
    response_ids: list[int]
    sampler_logprobs: list[float]  # of each response token, under the distribution it was drawn from
    truncated: bool  # stopped by max_new_tokens, not by an end token


@dataclass
class Scores:
    """The teacher's log-probs (temperature 1) at a sample's response tokens."""

    logprobs: torch.Tensor  # [R] of each response token
    topk_ids: torch.Tensor | None = None  # [R, k] the teacher's own top-k at each position (when asked for)
    topk_logprobs: torch.Tensor | None = None  # [R, k]
