"""Per-token losses for packed batches, and router statistics.

Normalisation follows torchtune: every loss is a *sum* over target tokens divided by the number of
target tokens in the whole global batch (all workers, all micro-batches), so a step's gradient is the
same however the batch is split. DeepSpeed averages gradients over data-parallel ranks, hence the
`world_size` factor in `scale`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posttrain.data.packing import IGNORE


def token_logprobs(logits_TV: torch.Tensor, targets_T: torch.Tensor) -> torch.Tensor:
    """log p(target_t) at each position; positions whose target is IGNORE give 0."""
    safe_T = targets_T.clamp_min(0)
    logp_T = -F.cross_entropy(logits_TV.float(), safe_T, reduction="none")
    return torch.where(targets_T == IGNORE, torch.zeros_like(logp_T), logp_T)


def nll_sum(logits_TV: torch.Tensor, labels_T: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_TV.float(), labels_T, ignore_index=IGNORE, reduction="sum")


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """The Switch-Transformer auxiliary loss, as transformers computes it for Qwen3-MoE.

    Packed batches carry no padding, so no attention mask is needed.
    """
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    return load_balancing_loss_func(router_logits, num_experts, top_k)


@torch.no_grad()
def expert_counts(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Tokens routed to each expert, per layer: [num_layers, num_experts] (float, summable)."""
    counts = []
    for layer_logits_TE in router_logits:
        num_experts = layer_logits_TE.shape[-1]
        chosen = layer_logits_TE.topk(top_k, dim=-1).indices.reshape(-1)
        counts.append(torch.bincount(chosen, minlength=num_experts).float())
    return torch.stack(counts)


def expert_imbalance(counts_LE: torch.Tensor) -> list[float]:
    """Per layer: the busiest expert's load over the mean load (1.0 is perfectly balanced)."""
    mean_L = counts_LE.mean(dim=-1).clamp_min(1e-9)
    return (counts_LE.max(dim=-1).values / mean_L).tolist()
