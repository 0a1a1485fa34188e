"""The reverse-KL losses of on-policy distillation, per response token.

Notation, per response position n: the student's distribution p (its logits), the teacher's q, the
sampled token y ~ p_sampler; the teacher returns log q(y) and, where asked, its top-k ids K and log q_K.
The objective is the reverse KL, KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), whose gradient is
Σ_v ∇p_v · (log p_v − log q_v) (the Σ_v p_v ∇log p_v term is ∇Σ p = 0).

- `sampled` (tinker-cookbook, slime; the card's recipe): the single-sample estimate. The advantage
  A = −coef · (log p_sampler(y) − log q(y)) (posttrain.losses.advantages: with an optional baseline and
  normalisation over the global batch) multiplies ∇log p(y) through the importance ratio
  exp(log p_train − log p_sampler), clipped PPO-style, because sampler and trainer log-probs differ
  slightly (kernels, precision) and the rollout may lag the trainer by a step. Unbiased, but one token's
  draw carries the whole distribution: with a near-deterministic teacher, log q(y) of a wrong token is
  −15 and the per-token variance is large.
- `topk`: the reverse KL over the teacher's top-k plus one tail bucket for the rest of the vocabulary,
  computed exactly from the student's logits (with k equal to the vocabulary, the full reverse KL). The
  bucket treats the tail as one outcome, so this is a lower bound of the full KL and says nothing about
  the shape of the student's tail.
- `topk_sampled`: the top-k terms exactly, and beyond the top-k the sampled token's term: the gradient
  Σ_{v∈K} ∇p_v (log p_v − log q_v) + c ∇p_tail + 1[y∉K] (log p(y) − log q(y) − c) ∇log p(y), with c the
  tail bucket's log-ratio at that position, whose expectation over y is the full reverse-KL gradient (the
  tail's sum Σ_{v∉K} ∇p_v (log p_v − log q_v), its bucket part exactly and the rest estimated by the one
  draw). Dense targets at every position, the sampled-token correction only where the top-k does not reach.
  It takes no `advantages`: its baseline (c) is per token, from the logits.

Every loss here reports `reverse_kl_topk`: Σ_{v∈K} p_v (log p_v − log q_v) + 1[y∉K](log p(y) − log q(y)),
an unbiased estimate of the full reverse KL that is exact over the top-k (beside the step's single-sample
`reverse_kl`), when the teacher's top-k is given. Tails are computed in log space: 1 − Σ exp(log p_K)
in float32 loses every tail mass under ~1e-7, and with it the tail's term.
"""

from __future__ import annotations

import torch

from posttrain.config import LossConfig
from posttrain.losses.tokens import token_logprobs


def sampled_reverse_kl(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg: LossConfig, *,
                       sampler_logprobs: torch.Tensor, advantages: torch.Tensor,
                       teacher_logprobs: torch.Tensor | None = None, teacher_topk_ids: torch.Tensor | None = None,
                       teacher_topk_logprobs: torch.Tensor | None = None):
    """The single-sample estimate as a clipped policy-gradient loss; the top-k inputs only feed the metric."""
    logp_N = token_logprobs(logits_NV, targets_N)
    loss_N, clipped_N = clipped_policy_gradient(logp_N, sampler_logprobs, advantages, cfg.clip_ratio)
    metrics = {"clip_frac": clipped_N}
    if teacher_topk_ids is not None:
        logp_NV = torch.log_softmax(logits_NV.detach().float(), dim=-1)
        part = TopK(logp_NV, targets_N, teacher_topk_ids, teacher_topk_logprobs)
        metrics["reverse_kl_topk"] = part.exact_kl(logp_N.detach(), teacher_logprobs)
    return loss_N, metrics


def topk_reverse_kl(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg: LossConfig, *,
                    teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor,
                    teacher_logprobs: torch.Tensor | None = None):
    """KL over the teacher's top-k and one tail bucket; exact (the bucket's value too, in log space)."""
    logp_NV = torch.log_softmax(logits_NV.float(), dim=-1)
    part = TopK(logp_NV, targets_N, teacher_topk_ids, teacher_topk_logprobs)
    kl_N = (part.p_NK * (part.logp_NK - teacher_topk_logprobs)).sum(-1)
    if teacher_topk_ids.shape[-1] < logits_NV.shape[-1]:
        # The tail bucket: every token outside the teacher's top-k, as one outcome.
        kl_N = kl_N + part.tail_logp_N.exp() * (part.tail_logp_N - part.teacher_tail_logp_N)
    metrics = {}
    if teacher_logprobs is not None:
        metrics["reverse_kl_topk"] = part.exact_kl(logp_NV.detach().gather(-1, targets_N[:, None])[:, 0], teacher_logprobs)
    return kl_N, metrics


def topk_sampled_reverse_kl(logits_NV: torch.Tensor, targets_N: torch.Tensor, cfg: LossConfig, *,
                            sampler_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor,
                            teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor):
    """The top-k terms exactly; beyond the top-k, the tail bucket's term exactly and the sampled token's
    deviation from it, as a policy-gradient term (the bucket's log-ratio is its per-token baseline)."""
    logp_NV = torch.log_softmax(logits_NV.float(), dim=-1)
    part = TopK(logp_NV, targets_N, teacher_topk_ids, teacher_topk_logprobs)
    # Σ_K p · stopgrad(log p − log q): its gradient is Σ_K ∇p (log p − log q), the top-k's share of ∇KL
    # (differentiating the log too would add Σ_K ∇p = −∇(tail mass), which is not part of ∇KL).
    loss_N = (part.p_NK * (part.logp_NK - teacher_topk_logprobs).detach()).sum(-1)
    logp_N = logp_NV.gather(-1, targets_N[:, None])[:, 0]
    metrics = {"reverse_kl_topk": part.exact_kl(logp_N.detach(), teacher_logprobs)}
    if teacher_topk_ids.shape[-1] >= logits_NV.shape[-1]:
        return loss_N, metrics  # the teacher's full distribution: nothing left to sample
    # The tail's share, Σ_{v∉K} ∇p_v (log p_v − log q_v), split around the bucket's log-ratio c (one number
    # per position): c · ∇p_tail exactly, plus E_y[1(y∉K)(log p_y − log q_y − c) ∇log p_y] from the one draw.
    # c is a baseline (it does not depend on y), so the sum stays unbiased; it takes out the bulk of the
    # tail's log-ratio (a teacher's tail token sits ~10 nats below the student's), and with it most variance.
    c_N = (part.tail_logp_N - part.teacher_tail_logp_N).detach()
    loss_N = loss_N + part.tail_logp_N.exp() * c_N
    advantage_N = -cfg.kl_coef * (sampler_logprobs - teacher_logprobs - c_N)
    tail_N, clipped_N = clipped_policy_gradient(logp_N, sampler_logprobs, advantage_N, cfg.clip_ratio)
    outside_N = (~part.in_topk_N).float()
    return loss_N + outside_N * tail_N, {**metrics, "clip_frac": clipped_N * outside_N, "outside_topk": outside_N}


# --------------------------------------------------------------------------------------------------


def clipped_policy_gradient(logp_N: torch.Tensor, sampler_logp_N: torch.Tensor, advantage_N: torch.Tensor,
                            clip_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate −min(r·A, clip(r)·A), r = exp(log π_train − log π_sampler), and where the clip
    decided it (the clipped fraction: 0 on-policy, where r = 1)."""
    ratio_N = torch.exp(logp_N - sampler_logp_N)
    clipped_ratio_N = ratio_N.clamp(1 - clip_ratio, 1 + clip_ratio)
    unclipped_N, clipped_N = ratio_N * advantage_N, clipped_ratio_N * advantage_N
    return -torch.minimum(unclipped_N, clipped_N), (clipped_N < unclipped_N).detach().float()


class TopK:
    """The student's side of the teacher's top-k at each position: log p and p there, the tail's log-mass
    (log Σ_{v∉K} p_v, from the logits: no cancellation), and whether the sampled token is in the top-k;
    and the teacher's tail log-mass (`teacher_tail_logp_N`), for the losses with a tail bucket."""

    def __init__(self, logp_NV: torch.Tensor, targets_N: torch.Tensor, ids_NK: torch.Tensor, teacher_logp_NK: torch.Tensor):
        self.logp_NK = logp_NV.gather(-1, ids_NK)
        self.p_NK = self.logp_NK.exp()
        self.teacher_logp_NK = teacher_logp_NK
        self.tail_logp_N = torch.logsumexp(logp_NV.scatter(-1, ids_NK, float("-inf")), dim=-1)
        self.in_topk_N = (ids_NK == targets_N[:, None]).any(-1)

    @property
    def teacher_tail_logp_N(self) -> torch.Tensor:
        """log(1 − Σ_K q): the teacher's mass outside its top-k, in log space (float64 for the sum's precision)."""
        return log1mexp(torch.logsumexp(self.teacher_logp_NK.double(), dim=-1)).float()

    @torch.no_grad()
    def exact_kl(self, logp_N: torch.Tensor, teacher_logp_N: torch.Tensor) -> torch.Tensor:
        """Σ_K p (log p − log q) exactly, plus the sampled token's term when it lies outside the top-k:
        an unbiased estimate of the full reverse KL (y ~ p), with no variance from the top-k."""
        inside_N = (self.p_NK * (self.logp_NK - self.teacher_logp_NK)).sum(-1)
        return inside_N + (~self.in_topk_N).float() * (logp_N - teacher_logp_N)



def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0 without cancellation (Mächler 2012), floored at log 1e-12 where the
    complement is below what `x`'s precision can tell (x rounded to 0)."""
    x = x.clamp(max=0.0)
    out = torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(-27.631021115928547)  # log 1e-12, as the float version clamped
