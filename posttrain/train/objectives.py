"""Per-micro-batch objectives. Each returns (loss summed over target tokens, stats to sum).

The worker divides the sum by the global number of targets, so these never normalise themselves.
"""

from __future__ import annotations

from posttrain.data.packing import IGNORE, PackedBatch
from posttrain.train.losses import load_balancing_loss, nll_sum


def sft(out, batch: PackedBatch, model_config, trainer_cfg):
    """Negative log-likelihood of the assistant tokens + the router load-balancing loss.

    The aux loss is a per-micro-batch mean; weighting it by the micro-batch's target count makes
    the step's total the target-weighted mean over the global batch.
    """
    logits_TV = out.logits[0]
    labels_T = batch.labels
    targets = int((labels_T != IGNORE).sum())
    nll = nll_sum(logits_TV, labels_T)
    loss = nll
    stats = {"nll_sum": nll.item(), "targets": targets, "aux_sum": 0.0}
    # Computed even for an empty placeholder (weight 0): under ZeRO-3 every rank must run the same
    # graph, or the ranks' recorded module traces diverge and the next all-gather hangs.
    if trainer_cfg.router_aux_loss_coef > 0 and out.router_logits:
        aux = load_balancing_loss(out.router_logits, model_config.num_experts, model_config.num_experts_per_tok)
        loss = loss + trainer_cfg.router_aux_loss_coef * aux * targets
        stats["aux_sum"] = aux.item() * targets
    return loss, stats


def opd(out, batch: PackedBatch, model_config, trainer_cfg, mode: str = "sampled", kl_coef: float = 1.0,
        clip_ratio: float = 0.2):
    """Reverse KL to the teacher on the student's own samples (see `posttrain.opd.loss`)."""
    from posttrain.opd.loss import sampled_reverse_kl_loss, topk_reverse_kl_loss

    logits_TV = out.logits[0]
    mask_T = batch.labels != IGNORE
    if mode == "topk":
        loss_T = topk_reverse_kl_loss(logits_TV, batch.extras["teacher_topk_ids"], batch.extras["teacher_topk_logprobs"])
    else:
        loss_T = sampled_reverse_kl_loss(logits_TV, batch.labels, batch.extras["sampler_logprobs"],
                                         batch.extras["teacher_logprobs"], kl_coef, clip_ratio)
    loss = (loss_T * mask_T).sum()
    return loss, {"loss_sum": loss.item(), "targets": int(mask_T.sum())}
