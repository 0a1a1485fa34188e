"""Per-token log-likelihoods from logits: what every loss here starts from."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits_NV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """log p(target_n) at each position, in float32."""
    return -F.cross_entropy(logits_NV.float(), targets_N, reduction="none")


def nll(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg=None) -> torch.Tensor:
    """SFT: the negative log-likelihood of each target token."""
    return -token_logprobs(logits_NV, targets_N)
