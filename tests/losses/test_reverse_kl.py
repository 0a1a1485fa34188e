"""The OPD losses against independent computations of the reverse KL and its gradient.

Expectations over the sampled token are taken exactly: every token y of a small vocabulary, weighted by
the student's probability of it.
"""

import torch

from posttrain.config import LossConfig
from posttrain.losses.advantages import batch_advantages
from posttrain.losses.reverse_kl import sampled_reverse_kl, topk_reverse_kl, topk_sampled_reverse_kl


def sampled(logits_NV, targets_N, sampler_logp_N, advantages_N, clip_ratio=0.2, **topk):
    loss_N, metrics = sampled_reverse_kl(logits_NV, targets_N, LossConfig(clip_ratio=clip_ratio),
                                         sampler_logprobs=sampler_logp_N, advantages=advantages_N, **topk)
    return loss_N, metrics


def topk(logits_NV, targets_N, ids_NK, logp_NK, teacher_logp_N=None):
    return topk_reverse_kl(logits_NV, targets_N, LossConfig(), teacher_topk_ids=ids_NK, teacher_topk_logprobs=logp_NK,
                           teacher_logprobs=teacher_logp_N)


def topk_sampled(logits_NV, targets_N, sampler_logp_N, teacher_logp_N, ids_NK, logp_NK):
    return topk_sampled_reverse_kl(logits_NV, targets_N, LossConfig(), sampler_logprobs=sampler_logp_N,
                                   teacher_logprobs=teacher_logp_N, teacher_topk_ids=ids_NK, teacher_topk_logprobs=logp_NK)


def full_reverse_kl(student_logits_TV, teacher_logits_TV):
    p_TV = torch.softmax(student_logits_TV, -1)
    return (p_TV * (torch.log_softmax(student_logits_TV, -1) - torch.log_softmax(teacher_logits_TV, -1))).sum(-1)


def one_position(seed, V=7, peaked=1.0):
    """A student's logits [1, V] (requiring grad) and a teacher's log-probs [V]."""
    g = torch.Generator().manual_seed(seed)
    student_1V = torch.randn(1, V, generator=g, requires_grad=True)
    teacher_logp_V = torch.log_softmax(torch.randn(V, generator=g) * peaked, -1)
    return student_1V, teacher_logp_V


def exact_gradient(student_1V, teacher_logp_V):
    (grad,) = torch.autograd.grad(full_reverse_kl(student_1V, teacher_logp_V[None]).sum(), student_1V)
    return grad


def expected_gradient(student_1V, loss_of_token):
    """Σ_y π_s(y) ∇ loss(y): the expected gradient of a sampled loss, on-policy (sampler = student)."""
    p_V = torch.softmax(student_1V.detach(), -1)[0]
    expected = torch.zeros_like(student_1V)
    for y in range(student_1V.shape[-1]):
        (grad,) = torch.autograd.grad(loss_of_token(y).sum(), student_1V)
        expected += p_V[y] * grad
    return expected


def test_topk_with_k_equal_to_the_vocabulary_is_the_exact_reverse_kl():
    g = torch.Generator().manual_seed(0)
    student_TV = torch.randn(6, 11, generator=g, requires_grad=True)
    teacher_TV = torch.randn(6, 11, generator=g) * 2
    teacher_logp_TV = torch.log_softmax(teacher_TV, -1)
    values_TK, ids_TK = teacher_logp_TV.topk(11, dim=-1)

    ours = topk(student_TV, ids_TK[:, 0], ids_TK, values_TK)[0].sum()
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
    assert torch.allclose(topk(student_TV, ids_TK[:, 0], ids_TK, values_TK)[0], torch.zeros(4), atol=1e-5)


def test_the_tail_bucket_is_computed_in_log_space():
    """A student whose mass outside the teacher's top-3 is 1e-9, a teacher's tail of 1e-3. In float32,
    1 − Σ p rounds the student's tail to 0 (clamped): the bucket's own term and its pull on the tail's
    logits vanish, and their gradient is 30% off. In log space the tail's gradient is the float64 one (to
    1e-3 relative), and the value the float64 one (to float32 resolution)."""
    V, K = 40, 3
    head = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    tail_logit = float(torch.log(torch.tensor(1e-9 / (V - K), dtype=torch.float64)) + head.logsumexp(0))
    logits_1V = torch.cat([head, torch.full((V - K,), tail_logit, dtype=torch.float64)])[None]
    teacher_logp_V = torch.log_softmax(torch.cat([torch.tensor([3.0, 0.0, -1.0]), torch.full((V - K,), -8.0)]).double(), 0)
    ids_1K, values_1K = torch.arange(K)[None], teacher_logp_V[:K][None]

    def bucket(logits, tail_s):  # the bucketed KL by its definition
        p = torch.softmax(logits, -1)
        tail_t = 1 - values_1K.to(logits.dtype).exp().sum(-1)
        return (p[:, :K] * (p[:, :K].log() - values_1K)).sum(-1) + tail_s * (tail_s.log() - tail_t.log())

    reference_64 = logits_1V.clone().requires_grad_(True)
    expected = bucket(reference_64, torch.softmax(reference_64, -1)[:, K:].sum(-1))
    (grad_ref,) = torch.autograd.grad(expected.sum(), reference_64)
    naive_32 = logits_1V.float().requires_grad_(True)  # the float version: 1 − Σ p, clamped
    (grad_naive,) = torch.autograd.grad(bucket(naive_32, (1 - torch.softmax(naive_32, -1)[:, :K].sum(-1)).clamp_min(1e-12)).sum(), naive_32)
    assert not torch.allclose(grad_naive[0, K:].double(), grad_ref[0, K:], rtol=0.2, atol=0)

    student = logits_1V.float().requires_grad_(True)
    ours = topk(student, torch.tensor([0]), ids_1K, values_1K.float())[0]
    (grad_ours,) = torch.autograd.grad(ours.sum(), student)
    assert torch.allclose(grad_ours[0, K:].double(), grad_ref[0, K:], rtol=1e-3, atol=0)
    assert torch.allclose(grad_ours.double(), grad_ref, atol=1e-6)
    assert abs(float(ours.detach()) - float(expected.detach())) < 1e-6


def test_sampled_loss_is_the_policy_gradient_of_the_reverse_kl():
    """On-policy (ratio 1), the expected gradient over y ~ π_s of the sampled loss is ∇ KL(π_s ‖ π_T)."""
    student_1V, teacher_logp_V = one_position(2)
    V = student_1V.shape[-1]
    p_V = torch.softmax(student_1V.detach(), -1)[0]
    sampler_logp_V = torch.log_softmax(student_1V.detach(), -1)[0]

    def loss(y):
        advantage = -(sampler_logp_V[y] - teacher_logp_V[y])
        return sampled(student_1V, torch.tensor([y]), sampler_logp_V[y:y + 1], advantage[None])[0]

    for y in range(V):  # the per-sample form: (log π_s(y) − log π_T(y)) · ∇ log π_s(y)
        (grad,) = torch.autograd.grad(loss(y).sum(), student_1V)
        onehot = torch.nn.functional.one_hot(torch.tensor([y]), V).float()
        assert torch.allclose(grad, (sampler_logp_V[y] - teacher_logp_V[y]) * (onehot - p_V), atol=1e-6)
    assert torch.allclose(expected_gradient(student_1V, loss), exact_gradient(student_1V, teacher_logp_V), atol=1e-6)


def test_topk_sampled_is_an_unbiased_estimate_of_the_full_reverse_kl_gradient():
    """The top-k terms exactly, the sampled token's beyond them: in expectation, the full reverse KL's gradient
    and value (the `reverse_kl_topk` metric) — where the tail-bucket loss is biased."""
    student_1V, teacher_logp_V = one_position(3, V=9, peaked=3.0)
    sampler_logp_V = torch.log_softmax(student_1V.detach(), -1)[0]
    values_1K, ids_1K = teacher_logp_V[None].topk(3, dim=-1)

    def loss(y, metric=None):
        loss_N, metrics = topk_sampled(student_1V, torch.tensor([y]), sampler_logp_V[y:y + 1], teacher_logp_V[y:y + 1],
                                       ids_1K, values_1K)
        return metrics[metric] if metric else loss_N

    exact = exact_gradient(student_1V, teacher_logp_V)
    assert torch.allclose(expected_gradient(student_1V, loss), exact, atol=1e-6)
    p_V = torch.softmax(student_1V.detach(), -1)[0]
    full = full_reverse_kl(student_1V.detach(), teacher_logp_V[None])
    for value_of in (lambda y: loss(y, "reverse_kl_topk"), lambda y: loss(y).detach()):  # the metric, and the loss's value
        assert torch.allclose(sum(p_V[y] * value_of(y) for y in range(9)), full, atol=1e-6)
    # The tail bucket's gradient is not the full KL's (it only sees the tail's total mass).
    (bucket,) = torch.autograd.grad(topk(student_1V, torch.tensor([0]), ids_1K, values_1K)[0].sum(), student_1V)
    assert (bucket - exact).abs().max() > 1e-3


def test_every_reverse_kl_loss_reports_the_top_k_estimate_of_the_full_kl():
    student_1V, teacher_logp_V = one_position(4, V=9, peaked=3.0)
    sampler_logp_V = torch.log_softmax(student_1V.detach(), -1)[0]
    values_1K, ids_1K = teacher_logp_V[None].topk(4, dim=-1)
    p_V = torch.softmax(student_1V.detach(), -1)[0]
    full = full_reverse_kl(student_1V.detach(), teacher_logp_V[None])
    for name, metric_of in {
        "sampled": lambda y: sampled(student_1V, torch.tensor([y]), sampler_logp_V[y:y + 1], torch.zeros(1),
                                     teacher_logprobs=teacher_logp_V[y:y + 1], teacher_topk_ids=ids_1K,
                                     teacher_topk_logprobs=values_1K)[1]["reverse_kl_topk"],
        "topk": lambda y: topk(student_1V, torch.tensor([y]), ids_1K, values_1K, teacher_logp_V[y:y + 1])[1]["reverse_kl_topk"],
    }.items():
        assert torch.allclose(sum(p_V[y] * metric_of(y) for y in range(9)), full, atol=1e-6), name


def test_baselines_and_normalisation_keep_the_expected_gradient():
    """Two samples of one prompt at one position (one token each), drawn independently: over every pair
    (y1, y2), the summed gradient with each baseline is 2·∇KL (prompt_mean, leave-one-out: exactly;
    batch_mean: scaled by 1 − 1/N, N the batch's tokens, as the mean includes the token's own advantage).
    Normalisation divides a whole batch by one number (test below): a rescaling, not a new direction."""
    student_1V, teacher_logp_V = one_position(5, V=6, peaked=2.0)
    V = student_1V.shape[-1]
    sampler_logp_V = torch.log_softmax(student_1V.detach(), -1)[0]
    p_V = sampler_logp_V.exp()
    exact = exact_gradient(student_1V, teacher_logp_V)

    def expected(cfg):
        total = torch.zeros_like(student_1V)
        for y1 in range(V):
            for y2 in range(V):
                ys = (y1, y2)
                adv = batch_advantages([sampler_logp_V[y:y + 1] for y in ys], [teacher_logp_V[y:y + 1] for y in ys],
                                       [0, 0], cfg)
                loss = sum(sampled(student_1V, torch.tensor([y]), sampler_logp_V[y:y + 1], a)[0].sum()
                           for y, a in zip(ys, adv.per_sample))
                (grad,) = torch.autograd.grad(loss, student_1V)
                total += p_V[y1] * p_V[y2] * grad
        return total

    assert torch.allclose(expected(LossConfig(baseline="none")), 2 * exact, atol=1e-5)
    assert torch.allclose(expected(LossConfig(baseline="prompt_mean")), 2 * exact, atol=1e-5)
    # A mean over N tokens that includes the token's own advantage scales the gradient by (1 − 1/N).
    assert torch.allclose(expected(LossConfig(baseline="batch_mean")), exact, atol=1e-5)


def test_batch_advantages_statistics_and_clamp():
    s = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])]
    t = [torch.tensor([-1.0, -20.0]), torch.tensor([-0.5])]
    plain = batch_advantages(s, t, [0, 1], LossConfig())
    assert torch.allclose(torch.cat(plain.per_sample), torch.tensor([0.0, -18.0, 0.0]))
    assert (plain.min, plain.max) == (-18.0, 0.0) and abs(plain.mean + 6.0) < 1e-6
    centred = batch_advantages(s, t, [0, 1], LossConfig(baseline="batch_mean", normalize_advantages=True))
    assert abs(centred.mean) < 1e-6 and abs(centred.std - 1.0) < 1e-6
    ratio = (torch.cat(centred.per_sample) / (torch.cat(plain.per_sample) + 6.0))
    assert torch.allclose(ratio, ratio[:1].expand(3))  # one divisor for the whole batch
    clamped = batch_advantages(s, t, [0, 1], LossConfig(advantage_clip=5.0))
    assert clamped.min == -5.0


def test_clipping_stops_the_gradient_once_the_ratio_left_the_trust_region():
    logits_1V = torch.zeros(1, 4, requires_grad=True)
    logp_now = torch.log_softmax(logits_1V.detach(), -1)[:, 0]
    stale_sampler = logp_now - 0.5  # ratio e^0.5 ≈ 1.65 > 1.2
    # The student is above the teacher here (advantage < 0): pushing the token down is still allowed.
    loss, metrics = sampled(logits_1V, torch.tensor([0]), stale_sampler, torch.tensor([-1.0]))
    (grad,) = torch.autograd.grad(loss.sum(), logits_1V)
    assert grad.abs().sum() > 0 and metrics["clip_frac"].item() == 0
    # Advantage > 0 with the ratio already above 1 + clip: clipped, and counted.
    loss, metrics = sampled(logits_1V, torch.tensor([0]), stale_sampler, torch.tensor([1.0]))
    (grad,) = torch.autograd.grad(loss.sum(), logits_1V)
    assert grad.abs().sum() == 0 and metrics["clip_frac"].item() == 1


def test_the_sampled_loss_asks_for_the_teachers_top_k_only_for_its_metric():
    from posttrain.losses import LOSSES

    with_metric = LOSSES["sampled"].configured(LossConfig(topk=20))
    assert with_metric.needs_teacher_topk and "teacher_logprobs" in with_metric.inputs
    plain = LOSSES["sampled"].configured(LossConfig(topk=0))  # the card's traffic: the sampled token's log-prob only
    assert plain.inputs == ("sampler_logprobs", "advantages") and not plain.needs_teacher_topk
    assert LOSSES["topk_sampled"].configured(LossConfig(topk=20)).needs_teacher_topk
