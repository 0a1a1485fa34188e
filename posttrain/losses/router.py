"""The router's side of an MoE: the load-balancing loss, and how many tokens each expert got."""

from __future__ import annotations

import torch


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
