"""The reverse-KL losses of on-policy distillation, per response token.

Sampled mode (tinker-cookbook, slime): the student sampled y_t; the per-token reverse-KL estimate
`rkl_t = log π_sampler(y_t) − log π_teacher(y_t)` becomes an advantage `A_t = −coef · rkl_t`
(discount 0, no gradient through it), and the policy-gradient loss carries the importance ratio
`exp(log π_train − log π_sampler)`, clipped PPO-style, because sampler and trainer log-probs differ
slightly (kernels, precision) and the rollout may lag the trainer by a step.

Top-k mode: where the teacher returns its top-k log-probs, the reverse KL over those k tokens plus
one tail bucket for the rest of the vocabulary, computed exactly from the student's logits. With k
equal to the vocabulary the tail is empty and this is the full reverse KL.
"""

from __future__ import annotations

import torch

from posttrain.config import LossConfig
from posttrain.losses.tokens import token_logprobs


def sampled_reverse_kl(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg: LossConfig, *,
                       sampler_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    logp_N = token_logprobs(logits_NV, targets_N)
    advantage_N = -cfg.kl_coef * (sampler_logprobs - teacher_logprobs).detach()
    ratio_N = torch.exp(logp_N - sampler_logprobs)
    clipped_N = ratio_N.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
    return -torch.minimum(ratio_N * advantage_N, clipped_N * advantage_N)


def topk_reverse_kl(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg: LossConfig, *,
                    teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor) -> torch.Tensor:
    student_logp_NV = torch.log_softmax(logits_NV.float(), dim=-1)
    student_logp_NK = student_logp_NV.gather(-1, teacher_topk_ids)
    student_p_NK = student_logp_NK.exp()
    kl_N = (student_p_NK * (student_logp_NK - teacher_topk_logprobs)).sum(-1)
    # The tail bucket: all tokens outside the teacher's top-k, as one outcome.
    student_tail_N = (1 - student_p_NK.sum(-1)).clamp_min(1e-12)
    teacher_tail_N = (1 - teacher_topk_logprobs.exp().sum(-1)).clamp_min(1e-12)
    if teacher_topk_logprobs.shape[-1] < logits_NV.shape[-1]:
        kl_N = kl_N + student_tail_N * (student_tail_N.log() - teacher_tail_N.log())
    return kl_N
