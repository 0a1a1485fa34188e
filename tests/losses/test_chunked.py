"""The chunked loss (hidden states -> LM head + loss, a chunk of target positions at a time, recomputed in
backward) against the whole-row path it replaces: the same values and gradients on the tiny student
(tied embeddings, a real qwen3_moe) for SFT's NLL and OPD's sampled and top-k losses, with LoRA, bf16 and
activation checkpointing. The trainer-level twin (DeepSpeed ZeRO 0/2/3) is tests/train/test_worker.py."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import LoRAConfig
from posttrain.data.packing import IGNORE
from posttrain.losses import LOSSES, Loss
from posttrain.losses.chunked import (chunked_loss, decoder_and_head, fused_nll_kernel, head_grad_in_place,
                                     sparse_tied_embedding_grad)
from posttrain.losses.tokens import nll
from posttrain.train.lora import apply_lora
from tests.helpers import LOSS_CFG as CFG, packed_batch


def with_metric(logits_NV, targets_N, cfg):
    """A loss that also reports a per-token metric (the contract's second form)."""
    loss_N = nll(logits_NV, targets_N)
    return loss_N, {"nll_squared": loss_N.detach() ** 2}


LOSS_CASES = {**LOSSES, "with_metric": Loss(with_metric)}


def whole_row(model, batch, loss: Loss):
    """Today's path: the model's logits for the whole row, the loss at the target positions."""
    mask_T = batch.labels != IGNORE
    logits_TV = model(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None], use_cache=False).logits[0]
    out = loss.fn(logits_TV[mask_T], batch.labels[mask_T], CFG, **{k: batch.extras[k][mask_T] for k in loss.inputs})
    loss_N, metrics = out if isinstance(out, tuple) else (out, {})
    return loss_N.sum(), {k: v.sum() for k, v in metrics.items()}


def chunked(model, batch, loss: Loss, chunk: int, num_chunks=None, grad_in_place: bool = False):
    """The trainer's path: the decoder's last hidden states at target positions, then chunked_loss."""
    decoder, head = decoder_and_head(model)
    mask_T = batch.labels != IGNORE
    hidden_TH = decoder(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None],
                        use_cache=False).last_hidden_state[0]
    totals = chunked_loss(hidden_TH[mask_T], head, batch.labels[mask_T], loss, CFG,
                          {k: batch.extras[k][mask_T] for k in loss.inputs}, chunk, num_chunks, grad_in_place)
    return totals.loss, totals.metrics


def grads(model, value) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return dict(zip(params, torch.autograd.grad(value, list(params.values()), allow_unused=True)))


def assert_same(model, batch, loss: Loss, chunk: int, atol: float, rtol: float = 1e-5, num_chunks=None):
    ref, ref_metrics = whole_row(model, batch, loss)
    ours, our_metrics = chunked(model, batch, loss, chunk, num_chunks)
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=rtol)
    assert our_metrics.keys() == ref_metrics.keys()
    for name in ref_metrics:
        torch.testing.assert_close(our_metrics[name].float(), ref_metrics[name].float(), atol=atol, rtol=rtol)
    ref_grads, our_grads = grads(model, ref), grads(model, ours)
    assert ref_grads, "nothing to compare"
    for name, g in ref_grads.items():
        if g is None:
            assert our_grads[name] is None, name
            continue
        torch.testing.assert_close(our_grads[name].float(), g.float(), atol=atol, rtol=rtol, msg=name)


@pytest.fixture
def student(tiny_models):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"], dtype=torch.float32)
    assert model.config.tie_word_embeddings  # the head's weight is the embedding: both paths' gradients meet there
    return model.train()


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_same_values_and_gradients_as_the_whole_row(student, name):
    batch = packed_batch(student.config.vocab_size)
    # 7 does not divide the 37 targets: a short last chunk; 2 spare (empty) chunks, as ZeRO-3 ranks pad theirs.
    assert_same(student, batch, LOSS_CASES[name], chunk=7, atol=1e-5, num_chunks=8)


def test_with_activation_checkpointing(student):
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = packed_batch(student.config.vocab_size, seed=1)
    for name in ("nll", "topk"):
        assert_same(student, batch, LOSSES[name], chunk=5, atol=1e-5)


def test_with_lora_adapters(student):
    model = apply_lora(student, LoRAConfig(enabled=True, rank=4, alpha=8, target_parameters=["mlp.experts.down_proj"]))
    with torch.no_grad():  # B starts at 0: give the adapters a value so their gradients differ from the base's
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    batch = packed_batch(student.config.vocab_size, seed=2)
    for name in ("nll", "sampled"):
        assert_same(model, batch, LOSSES[name], chunk=9, atol=1e-5)


def test_in_bfloat16(student):
    model = student.to(torch.bfloat16)
    batch = packed_batch(model.config.vocab_size, seed=3)
    # Both paths run the same bf16 matmuls and an fp32 loss; chunking changes only the summation order.
    assert_same(model, batch, LOSSES["topk"], chunk=8, atol=2e-2, rtol=2e-2)


def test_too_few_chunks_is_an_error(student):
    batch = packed_batch(student.config.vocab_size)
    with pytest.raises(ValueError, match="fewer than the 6 chunks"):
        chunked(student, batch, LOSSES["nll"], chunk=7, num_chunks=2)


def test_models_whose_logits_are_not_the_head_alone_are_refused(student):
    student.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        decoder_and_head(student)


def test_the_fused_kernel_is_not_chosen_off_cuda_or_for_other_losses(student):
    _, head = decoder_and_head(student)
    assert fused_nll_kernel(head, LOSSES["nll"], torch.device("cpu"), weights_partitioned=False) is None
    assert fused_nll_kernel(head, LOSSES["sampled"], torch.device("cuda", 0), weights_partitioned=False) is None
    assert fused_nll_kernel(head, LOSSES["nll"], torch.device("cuda", 0), weights_partitioned=True) is None


def backward_grads(model, loss: Loss, chunk: int, grad_in_place: bool, micro_batches: int = 2):
    """`.grad` of every parameter after `micro_batches` backward passes through the chunked loss, as the
    trainer accumulates them (the second pass adds into the first's `.grad`)."""
    model.zero_grad(set_to_none=True)
    _, head = decoder_and_head(model)
    model.get_input_embeddings().sparse = grad_in_place and sparse_tied_embedding_grad(model, head)
    for k in range(micro_batches):
        value, _ = chunked(model, packed_batch(model.config.vocab_size, seed=10 + k), loss, chunk,
                           grad_in_place=grad_in_place)
        (value * 0.37).backward()  # a scale, as the trainer's 1 / global targets
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["nll", "sampled", "topk"])
def test_head_gradient_added_in_place_equals_autograds(student, name):
    """HeadInPlace writes the tied head/embedding's gradient into `.grad` itself, the embedding's rows added
    in sparse: the same gradients as autograd's sum, for every parameter, over two accumulated
    micro-batches and a short last chunk."""
    ref = backward_grads(student, LOSSES[name], chunk=7, grad_in_place=False)
    ours = backward_grads(student, LOSSES[name], chunk=7, grad_in_place=True)
    assert ours.keys() == ref.keys() and "model.embed_tokens.weight" in ref
    assert not ours["model.embed_tokens.weight"].is_sparse
    for param, grad in ref.items():
        torch.testing.assert_close(ours[param], grad, atol=1e-6, rtol=1e-5, msg=param)


def test_head_gradient_in_place_only_where_nothing_else_reads_it(student):
    head = student.get_output_embeddings()
    assert head_grad_in_place(head, zero_stage=0, bf16=False)
    assert not head_grad_in_place(head, zero_stage=2, bf16=False)  # ZeRO hooks the gradient's accumulation
    assert not head_grad_in_place(head, zero_stage=0, bf16=True)  # so does DeepSpeed's bf16 optimizer
    handle = head.weight.register_post_accumulate_grad_hook(lambda p: None)
    assert not head_grad_in_place(head, zero_stage=0, bf16=False)
    handle.remove()
    head.weight.requires_grad_(False)  # LoRA: the base head is frozen
    assert not head_grad_in_place(head, zero_stage=0, bf16=False)


def test_a_micro_batch_without_targets_still_leaves_a_dense_gradient(student):
    """No head call, so only the sparse embedding rows reach the tied weight: they land in a dense `.grad`."""
    decoder, head = decoder_and_head(student)
    assert sparse_tied_embedding_grad(student, head)
    batch = packed_batch(student.config.vocab_size)
    hidden_TH = decoder(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None], use_cache=False).last_hidden_state[0]
    none = torch.zeros(batch.labels.shape[0], dtype=torch.bool)
    totals = chunked_loss(hidden_TH[none], head, batch.labels[none], LOSSES["nll"], CFG, {}, 7, grad_in_place=True)
    (totals.loss + 0 * hidden_TH.sum()).backward()
    grad = head.weight.grad
    assert grad is not None and not grad.is_sparse and grad.shape == head.weight.shape and not grad.any()


def test_the_fused_kernel_takes_an_empty_micro_batch(monkeypatch):
    """Issue 24 row 11: a rank's empty placeholder micro-batch gave Liger's kernel BT = 0 (ZeroDivisionError).
    Liger (Triton) runs on CUDA only: its loss is faked here as the real one divides, the rest is real."""
    import importlib.machinery
    import sys
    import types

    class FusedLinearCrossEntropy:  # as Liger's: a mean over BT inside, times BT for reduction "sum"
        def __init__(self, reduction):
            assert reduction == "sum"

        def __call__(self, weight, hidden_NH, targets_N):
            n = targets_N.numel()
            return torch.nn.functional.cross_entropy(hidden_NH @ weight.T, targets_N, reduction="sum") / n * n

    liger = types.ModuleType("liger_kernel")
    liger.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
    transformers_part = types.ModuleType("liger_kernel.transformers")
    transformers_part.LigerFusedLinearCrossEntropyLoss = FusedLinearCrossEntropy
    monkeypatch.setitem(sys.modules, "liger_kernel", liger)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_part)
    head = torch.nn.Linear(8, 16, bias=False)
    fused = fused_nll_kernel(head, LOSSES["nll"], torch.device("cuda"), weights_partitioned=False)
    assert fused is not None
    empty = fused(torch.zeros(0, 8, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.loss.item() == 0.0
    hidden, targets = torch.randn(5, 8), torch.randint(0, 16, (5,))
    torch.testing.assert_close(fused(hidden, targets).loss, nll(head(hidden), targets).sum())
