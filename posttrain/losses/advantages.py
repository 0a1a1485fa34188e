"""The sampled-token advantage, over the whole global batch: what the OPD step computes before training.

A_t = −kl_coef · (log π_sampler(y_t) − log π_teacher(y_t)) per response token (discount 0, as
tinker-cookbook and slime). What needs the batch as a whole is done here, once, on the driver, and each
token's value reaches the loss as the per-token input `advantages` (so a step's gradient is the same
however the batch is split over workers and micro-batches):

- `loss.baseline`: `batch_mean` subtracts the mean advantage of the global batch's tokens (a constant
  baseline: the expected gradient is unchanged, since E[∇log π] = 0); `prompt_mean` subtracts, from each
  sample's tokens, the mean advantage of the tokens of the other samples of its prompt (leave-one-out, so
  the baseline does not depend on the sample's own tokens: unbiased, as RLOO); `none` leaves A as is.
- `loss.normalize_advantages`: divides by the standard deviation over the global batch's tokens (GRPO's
  normalisation, per token); a uniform rescaling, which only changes the step under gradient clipping.
- `loss.advantage_clip` > 0: clamps |A| to it — biased, but bounds the heavy tail a near-deterministic
  teacher gives (log π_teacher of a wrong token is ~ −15).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from posttrain.config import LossConfig


@dataclass
class Advantages:
    """Each sample's per-token advantages [R], and their statistics over the global batch."""

    per_sample: list[torch.Tensor]
    mean: float
    std: float
    min: float
    max: float

    def stats(self) -> dict[str, float]:
        return {"adv_mean": self.mean, "adv_std": self.std, "adv_min": self.min, "adv_max": self.max}


def batch_advantages(sampler_logprobs: list[torch.Tensor], teacher_logprobs: list[torch.Tensor],
                     prompt_index: list[int], cfg: LossConfig) -> Advantages:
    """`sampler_logprobs[i]`, `teacher_logprobs[i]`: sample i's per-token log-probs [R_i]; `prompt_index[i]`:
    the prompt it answers (samples of one prompt share a `prompt_mean` baseline)."""
    advantages = [-cfg.kl_coef * (s.double() - t.double()) for s, t in zip(sampler_logprobs, teacher_logprobs, strict=True)]
    if cfg.baseline == "batch_mean":
        mean = torch.cat(advantages).mean() if sum(a.numel() for a in advantages) else 0.0
        advantages = [a - mean for a in advantages]
    elif cfg.baseline == "prompt_mean":
        advantages = _leave_one_out(advantages, prompt_index)
    flat = torch.cat(advantages) if advantages else torch.zeros(0, dtype=torch.float64)
    if cfg.normalize_advantages and flat.numel() > 1:
        std = flat.std()
        advantages = [a / (std + 1e-8) for a in advantages]
    if cfg.advantage_clip > 0:
        advantages = [a.clamp(-cfg.advantage_clip, cfg.advantage_clip) for a in advantages]
    flat = torch.cat(advantages) if advantages else torch.zeros(1, dtype=torch.float64)
    flat = flat if flat.numel() else torch.zeros(1, dtype=torch.float64)
    return Advantages([a.float() for a in advantages], float(flat.mean()),
                      float(flat.std()) if flat.numel() > 1 else 0.0, float(flat.min()), float(flat.max()))


def _leave_one_out(advantages: list[torch.Tensor], prompt_index: list[int]) -> list[torch.Tensor]:
    """Each sample's advantages minus the token-mean advantage of its prompt's other samples (none: 0)."""
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for a, p in zip(advantages, prompt_index, strict=True):
        sums[p] += float(a.sum())
        counts[p] += a.numel()
    out = []
    for a, p in zip(advantages, prompt_index, strict=True):
        others = counts[p] - a.numel()
        out.append(a - ((sums[p] - float(a.sum())) / others if others else 0.0))
    return out
