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

from posttrain.train.losses import token_logprobs


def sampled_reverse_kl_loss(logits_TV: torch.Tensor, targets_T: torch.Tensor, sampler_logp_T: torch.Tensor,
                            teacher_logp_T: torch.Tensor, kl_coef: float, clip_ratio: float) -> torch.Tensor:
    logp_T = token_logprobs(logits_TV, targets_T)
    advantage_T = -kl_coef * (sampler_logp_T - teacher_logp_T).detach()
    ratio_T = torch.exp(logp_T - sampler_logp_T)
    clipped_T = ratio_T.clamp(1 - clip_ratio, 1 + clip_ratio)
    return -torch.minimum(ratio_T * advantage_T, clipped_T * advantage_T)


def topk_reverse_kl_loss(logits_TV: torch.Tensor, topk_ids_TK: torch.Tensor, teacher_topk_logp_TK: torch.Tensor) -> torch.Tensor:
    student_logp_TV = torch.log_softmax(logits_TV.float(), dim=-1)
    student_logp_TK = student_logp_TV.gather(-1, topk_ids_TK)
    student_p_TK = student_logp_TK.exp()
    kl_T = (student_p_TK * (student_logp_TK - teacher_topk_logp_TK)).sum(-1)
    # The tail bucket: all tokens outside the teacher's top-k, as one outcome.
    student_tail_T = (1 - student_p_TK.sum(-1)).clamp_min(1e-12)
    teacher_tail_T = (1 - teacher_topk_logp_TK.exp().sum(-1)).clamp_min(1e-12)
    if teacher_topk_logp_TK.shape[-1] < logits_TV.shape[-1]:
        kl_T = kl_T + student_tail_T * (student_tail_T.log() - teacher_tail_T.log())
    return kl_T
