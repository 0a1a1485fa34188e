"""The OPD losses against independent computations of the reverse KL and its gradient."""

import torch

from posttrain.config import LossConfig
from posttrain.losses.reverse_kl import sampled_reverse_kl, topk_reverse_kl


def sampled(logits_NV, targets_N, sampler_logp_N, teacher_logp_N, kl_coef=1.0, clip_ratio=0.2):
    return sampled_reverse_kl(logits_NV, targets_N, LossConfig(kl_coef=kl_coef, clip_ratio=clip_ratio),
                              sampler_logprobs=sampler_logp_N, teacher_logprobs=teacher_logp_N)


def topk(logits_NV, ids_NK, logp_NK):
    return topk_reverse_kl(logits_NV, None, LossConfig(), teacher_topk_ids=ids_NK, teacher_topk_logprobs=logp_NK)


def full_reverse_kl(student_logits_TV, teacher_logits_TV):
    p_TV = torch.softmax(student_logits_TV, -1)
    return (p_TV * (torch.log_softmax(student_logits_TV, -1) - torch.log_softmax(teacher_logits_TV, -1))).sum(-1)


def test_topk_with_k_equal_to_the_vocabulary_is_the_exact_reverse_kl():
    g = torch.Generator().manual_seed(0)
    student_TV = torch.randn(6, 11, generator=g, requires_grad=True)
    teacher_TV = torch.randn(6, 11, generator=g) * 2
    teacher_logp_TV = torch.log_softmax(teacher_TV, -1)
    values_TK, ids_TK = teacher_logp_TV.topk(11, dim=-1)

    ours = topk(student_TV, ids_TK, values_TK).sum()
    (grad_ours,) = torch.autograd.grad(ours, student_TV)
    exact = full_reverse_kl(student_TV, teacher_TV).sum()
    (grad_exact,) = torch.autograd.grad(exact, student_TV)
    assert torch.allclose(ours, exact, atol=1e-5)
    assert torch.allclose(grad_ours, grad_exact, atol=1e-5)


def test_topk_tail_bucket_makes_a_true_divergence():
    g = torch.Generator().manual_seed(1)
    student_TV = torch.randn(4, 50, generator=g)
    values_TK, ids_TK = torch.log_softmax(student_TV, -1).topk(5, dim=-1)
    # A teacher equal to the student: zero, with the tail bucket accounted for.
    assert torch.allclose(topk(student_TV, ids_TK, values_TK), torch.zeros(4), atol=1e-5)


def test_sampled_loss_is_the_policy_gradient_of_the_reverse_kl():
    """On-policy (ratio 1), the expected gradient over y ~ π_s of the sampled loss is ∇ KL(π_s ‖ π_T).

    The expectation is taken exactly: every token y of a small vocabulary, weighted by π_s(y).
    """
    g = torch.Generator().manual_seed(2)
    V = 7
    student_1V = torch.randn(1, V, generator=g, requires_grad=True)
    teacher_logp_V = torch.log_softmax(torch.randn(V, generator=g), -1)
    p_V = torch.softmax(student_1V.detach(), -1)[0]
    expected = torch.zeros(1, V)
    for y in range(V):
        sampler_logp = torch.log_softmax(student_1V.detach(), -1)[:, y]
        loss = sampled(student_1V, torch.tensor([y]), sampler_logp, teacher_logp_V[y:y + 1]).sum()
        (grad,) = torch.autograd.grad(loss, student_1V)
        # The per-sample form: (log π_s(y) − log π_T(y)) · ∇ log π_s(y)
        onehot = torch.nn.functional.one_hot(torch.tensor([y]), V).float()
        assert torch.allclose(grad, (sampler_logp - teacher_logp_V[y]) * (onehot - p_V), atol=1e-6)
        expected += p_V[y] * grad
    exact = full_reverse_kl(student_1V, teacher_logp_V[None]).sum()
    (grad_exact,) = torch.autograd.grad(exact, student_1V)
    assert torch.allclose(expected, grad_exact, atol=1e-6)


def test_clipping_stops_the_gradient_once_the_ratio_left_the_trust_region():
    logits_1V = torch.zeros(1, 4, requires_grad=True)
    logp_now = torch.log_softmax(logits_1V.detach(), -1)[:, 0]
    stale_sampler = logp_now - 0.5  # ratio e^0.5 ≈ 1.65 > 1.2
    teacher = stale_sampler - 1.0  # the student is above the teacher here: advantage < 0 ...
    loss = sampled(logits_1V, torch.tensor([0]), stale_sampler, teacher).sum()
    (grad,) = torch.autograd.grad(loss, logits_1V)
    assert grad.abs().sum() > 0  # ... so pushing the token down is still allowed
    teacher = stale_sampler + 1.0  # advantage > 0 with the ratio already above 1 + clip: clipped
    loss = sampled(logits_1V, torch.tensor([0]), stale_sampler, teacher).sum()
    (grad,) = torch.autograd.grad(loss, logits_1V)
    assert grad.abs().sum() == 0
