"""Per-micro-batch objectives. Each returns (loss summed over target tokens, stats to sum).

The worker divides the sum by the global number of targets, so these never normalise themselves.
"""

from __future__ import annotations

from posttrain.data.packing import IGNORE
from posttrain.train.losses import load_balancing_loss, nll_sum


def sft(out, batch: dict, model_config, trainer_cfg):
    """Negative log-likelihood of the assistant tokens + the router load-balancing loss.

    The aux loss is a per-micro-batch mean; weighting it by the micro-batch's target count makes
    the step's total the target-weighted mean over the global batch.
    """
    logits_TV = out.logits[0]
    labels_T = batch["labels"]
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
