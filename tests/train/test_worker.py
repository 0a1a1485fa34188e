"""The trainer's chunked loss on real DeepSpeed engines (gloo, CPU): a step's loss, gradient norm and
expert counts equal a whole-row reference computed in this process from the model's full logits, at ZeRO
stage 0, 2 and 3 (two ranks whose micro-batches need different numbers of chunks), with activation
checkpointing, for SFT's NLL and OPD's top-k loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import DeepSpeedConfig, ModelConfig, OptimConfig, TrainerConfig
from posttrain.data.packing import IGNORE
from posttrain.losses import LOSSES
from posttrain.losses.router import expert_counts, load_balancing_loss
from posttrain.train.group import TrainerGroup
from tests.helpers import LOSS_CFG, packed_batch

VOCAB = 1000  # token ids below every tiny model's vocabulary


def reference(path, batch, loss_name: str, aux_coef: float) -> tuple[float, float, torch.Tensor]:
    """The step's loss per target token, gradient norm and expert counts from the whole row's logits."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    loss = LOSSES[loss_name]
    mask_T = batch.labels != IGNORE
    out = model(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None], output_router_logits=True,
                use_cache=False)
    loss_N = loss.fn(out.logits[0][mask_T], batch.labels[mask_T], LOSS_CFG,
                     **{k: batch.extras[k][mask_T] for k in loss.inputs})
    loss_N = loss_N[0] if isinstance(loss_N, tuple) else loss_N  # (loss_N, metrics) where the loss reports some
    targets = int(mask_T.sum())
    total = loss_N.sum()
    if aux_coef:
        config = model.config
        total = total + aux_coef * targets * load_balancing_loss(out.router_logits, config.num_experts,
                                                                 config.num_experts_per_tok)
    (total / targets).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    return loss_N.sum().item() / targets, norm.item(), expert_counts(out.router_logits, model.config.num_experts_per_tok)


def one_step(path, batch, loss_name: str, workers: int, chunk: int, aux_coef: float, checkpointing=False, **ds):
    trainer = TrainerConfig(num_workers=workers, cpus_per_worker=1, seed=0, loss_chunk_tokens=chunk,
                            router_aux_loss_coef=aux_coef, activation_checkpointing=checkpointing)
    group = TrainerGroup(ModelConfig(path=str(path)), trainer, OptimConfig(lr=1e-3, schedule="constant"),
                         DeepSpeedConfig(**ds), 1, pad_id=0)
    try:
        return group.train_step([batch], LOSSES[loss_name], LOSS_CFG)
    finally:
        group.close()


def test_one_rank_unpartitioned_equals_the_whole_row_with_router_terms(tiny_models, ray_local):
    batch = packed_batch(VOCAB)
    loss, norm, counts = reference(tiny_models["student"], batch, "nll", aux_coef=0.01)
    step = one_step(tiny_models["student"], batch, "nll", workers=1, chunk=5, aux_coef=0.01, zero_stage=0)
    assert step.loss == pytest.approx(loss, rel=1e-5)
    assert step.grad_norm == pytest.approx(norm, rel=1e-4)  # the aux loss's gradient included
    assert torch.equal(step.expert_counts_LE, counts)  # the router logits still reach the counts


@pytest.mark.parametrize("zero_stage,loss_name", [(2, "nll"), (3, "topk")])
def test_two_ranks_with_uneven_chunks_equal_the_whole_row(tiny_models, ray_local, zero_stage, loss_name):
    """The row is split at an example boundary between the ranks (25 and 12 targets, in chunks of 3: 9 and 4
    head calls); under ZeRO-3 the rank with fewer pads with empty chunks, as each call is a collective."""
    batch = packed_batch(VOCAB)
    loss, norm, _ = reference(tiny_models["student"], batch, loss_name, aux_coef=0.0)
    step = one_step(tiny_models["student"], batch, loss_name, workers=2, chunk=3, aux_coef=0.0,
                    checkpointing=zero_stage == 3, zero_stage=zero_stage)
    assert step.micro_batches == 1 and step.global_targets == int((batch.labels != IGNORE).sum())
    assert step.loss == pytest.approx(loss, rel=1e-5)
    assert step.grad_norm == pytest.approx(norm, rel=1e-4)
