"""The generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2023; TRL's GKDTrainer), on the
student's own samples, over the teacher's top-k and one tail bucket.

    JSD_β(p ‖ q) = β · KL(q ‖ m) + (1 − β) · KL(p ‖ m),   m = β q + (1 − β) p

with TRL's conventions at the ends: β = 1 is the reverse KL KL(p ‖ q) (the `topk` loss), β = 0 the forward
KL KL(q ‖ p). Why it is here beside the reverse KL: the reverse KL's pull on a token the teacher wants is
p_v · (log p_v − log q_v), which vanishes where the student gives that token little mass — the student's
own mistakes are the positions it learns least from. The forward KL's gradient in the logits is p − q,
whatever p is: it pulls the teacher's token up on the student's own prefixes (on-policy, DAgger-like), and β
between 0 and 1 trades the forward KL's mode covering against the reverse KL's mode seeking.

The bucket makes both distributions K + 1 outcomes (the teacher's top-k, then everything else), as in
posttrain.losses.reverse_kl.TopK; with k equal to the vocabulary there is no bucket and this is TRL's
`generalized_jsd_loss` per token (tests/losses/test_jsd.py).
"""

from __future__ import annotations

import math

import torch

from posttrain.config import LossConfig
from posttrain.losses.reverse_kl import TopK


def topk_jsd(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg: LossConfig, *,
             teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor,
             teacher_logprobs: torch.Tensor | None = None):
    """JSD_β over the teacher's top-k and a tail bucket, exactly (no sampled term: it has no variance)."""
    logp_NV = torch.log_softmax(logits_NV.float(), dim=-1)
    part = TopK(logp_NV, targets_N, teacher_topk_ids, teacher_topk_logprobs)
    student_NB, teacher_NB = part.logp_NK, teacher_topk_logprobs.float()
    if teacher_topk_ids.shape[-1] < logits_NV.shape[-1]:
        student_NB = torch.cat([student_NB, part.tail_logp_N[:, None]], dim=-1)
        teacher_NB = torch.cat([teacher_NB, part.teacher_tail_logp_N[:, None]], dim=-1)
    beta = cfg.beta
    if beta == 0.0:
        loss_N = kl(teacher_NB, student_NB)
    elif beta == 1.0:
        loss_N = kl(student_NB, teacher_NB)
    else:
        mixture_NB = torch.logaddexp(teacher_NB + math.log(beta), student_NB + math.log1p(-beta))
        loss_N = beta * kl(teacher_NB, mixture_NB) + (1 - beta) * kl(student_NB, mixture_NB)
    metrics = {}
    if teacher_logprobs is not None:
        metrics["reverse_kl_topk"] = part.exact_kl(logp_NV.detach().gather(-1, targets_N[:, None])[:, 0], teacher_logprobs)
    return loss_N, metrics


def kl(logp_NB: torch.Tensor, logq_NB: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probs (finite: log-softmax outputs and the bucket's floored tail)."""
    return (logp_NB.exp() * (logp_NB - logq_NB)).sum(-1)
