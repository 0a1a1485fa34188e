"""`topk_jsd` against TRL's GKD loss (the peer's own code), the reverse KL, and its tail bucket."""

import warnings

import pytest
import torch

from posttrain.config import ConfigError, LossConfig, OPDConfig, load_config
from posttrain.losses import LOSSES
from posttrain.losses.jsd import topk_jsd
from posttrain.losses.reverse_kl import topk_reverse_kl


def jsd(logits_NV, ids_NK, logp_NK, beta, teacher_logp_N=None):
    return topk_jsd(logits_NV, ids_NK[:, 0], LossConfig(mode="topk_jsd", beta=beta), teacher_topk_ids=ids_NK,
                    teacher_topk_logprobs=logp_NK, teacher_logprobs=teacher_logp_N)


def student_and_teacher(seed, T=6, V=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, V, generator=g, requires_grad=True), torch.randn(T, V, generator=g) * 2


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_with_k_equal_to_the_vocabulary_it_is_trls_generalized_jsd(beta):
    with warnings.catch_warnings():  # TRL's note that trl.experimental may change: this test is what would notice
        warnings.simplefilter("ignore")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

    student_TV, teacher_TV = student_and_teacher(int(beta * 10))
    values_TK, ids_TK = torch.log_softmax(teacher_TV, -1).topk(teacher_TV.shape[-1], dim=-1)
    ours = jsd(student_TV, ids_TK, values_TK, beta)[0].sum()
    theirs = GKDTrainer.generalized_jsd_loss(student_TV[None], teacher_TV[None], beta=beta, reduction="sum")
    (grad_ours,) = torch.autograd.grad(ours, student_TV)
    (grad_theirs,) = torch.autograd.grad(theirs, student_TV)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-5)


def test_beta_one_is_the_topk_reverse_kl_and_beta_zero_the_forward_kl_tail_bucket_included():
    student_TV, teacher_TV = student_and_teacher(3, T=5, V=40)
    values_TK, ids_TK = torch.log_softmax(teacher_TV, -1).topk(6, dim=-1)
    reverse = topk_reverse_kl(student_TV, ids_TK[:, 0], LossConfig(), teacher_topk_ids=ids_TK, teacher_topk_logprobs=values_TK)[0]
    assert torch.allclose(jsd(student_TV, ids_TK, values_TK, 1.0)[0], reverse, atol=1e-6)

    # The forward KL over the K + 1 outcomes by its definition, and its gradient p − q in the bucketed logits.
    p_TV = torch.softmax(student_TV, -1)
    p_TB = torch.cat([p_TV.gather(-1, ids_TK), 1 - p_TV.gather(-1, ids_TK).sum(-1, keepdim=True)], -1)
    q_TB = torch.cat([values_TK.exp(), 1 - values_TK.exp().sum(-1, keepdim=True)], -1)
    forward = (q_TB * (q_TB.log() - p_TB.log())).sum(-1)
    ours = jsd(student_TV, ids_TK, values_TK, 0.0)[0]
    assert torch.allclose(ours, forward, atol=1e-5)
    (grad,) = torch.autograd.grad(ours.sum(), student_TV)
    # Where the student misses the teacher's mode, the forward KL still pulls it up by (nearly) its whole mass.
    assert torch.allclose(grad.gather(-1, ids_TK), p_TV.gather(-1, ids_TK).detach() - q_TB[:, :-1], atol=1e-5)


def test_the_divergence_is_zero_when_the_student_is_the_teacher_and_positive_otherwise():
    student_TV, teacher_TV = student_and_teacher(4, T=4, V=50)
    values_TK, ids_TK = torch.log_softmax(student_TV.detach(), -1).topk(5, dim=-1)
    for beta in (0.0, 0.5, 1.0):
        assert torch.allclose(jsd(student_TV, ids_TK, values_TK, beta)[0], torch.zeros(4), atol=1e-5)
    values_TK, ids_TK = torch.log_softmax(teacher_TV, -1).topk(5, dim=-1)
    assert (jsd(student_TV, ids_TK, values_TK, 0.5)[0] > 0).all()


def test_it_reports_the_top_k_estimate_of_the_reverse_kl_and_is_a_registered_mode():
    student_TV, teacher_TV = student_and_teacher(5, T=3, V=30)
    teacher_logp_TV = torch.log_softmax(teacher_TV, -1)
    values_TK, ids_TK = teacher_logp_TV.topk(4, dim=-1)
    _, metrics = jsd(student_TV, ids_TK, values_TK, 0.5, teacher_logp_N=teacher_logp_TV.gather(-1, ids_TK[:, :1])[:, 0])
    assert metrics["reverse_kl_topk"].shape == (3,)
    loss = LOSSES["topk_jsd"].configured(LossConfig(mode="topk_jsd"))
    assert loss.needs_teacher_topk and "teacher_logprobs" in loss.inputs


def test_beta_outside_the_unit_interval_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'loss.beta' must be in \[0, 1\], got 1.5"):
        load_config(OPDConfig, "configs/tiny/opd.yaml", ["loss.mode=topk_jsd", "loss.beta=1.5"])
