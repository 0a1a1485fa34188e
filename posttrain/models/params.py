"""Parameters: counts, total and active per token, on the meta device (no memory, no weights); and the relative
noise `posttrain check` adds to them."""

from __future__ import annotations

import torch


def count_parameters(config) -> dict[str, int]:
    """Total and active parameters of a causal-LM config; tied embeddings count once.

    Experts are stored as 3-D tensors [num_experts, ...] (transformers >= 5); only
    `num_experts_per_tok` of them run per token, so only that share of them is active.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = expert = 0
    for name, param in model.named_parameters():  # shared (tied) parameters are yielded once
        total += param.numel()
        if ".mlp.experts." in name:
            expert += param.numel()
    num_experts = getattr(config, "num_experts", 0) or 1
    top_k = getattr(config, "num_experts_per_tok", num_experts)
    active = total - expert + expert * top_k // num_experts
    return {"total": total, "active": active, "expert": expert}


def train_flops_per_token(config, seq_len: int) -> float:
    """6 x active weights (forward + backward) + the attention score/value matmuls, per token."""
    counts = count_parameters(config)
    embedding = config.vocab_size * config.hidden_size
    active_matmul = counts["active"] - (0 if config.tie_word_embeddings else embedding)
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len / 2
    return 6 * active_matmul + attention


def add_relative_noise_(param: torch.Tensor, scale: float, generator: torch.Generator) -> None:
    """In place: Gaussian noise of `scale` x the tensor's own standard deviation (`posttrain check` perturbs the
    trainer's weights, and in its test a teacher replica's, with it). Drawn on the host from `generator`, so every
    rank and process that shares the seed draws the same noise."""
    noise = torch.randn(param.shape, generator=generator) * scale * param.float().std().nan_to_num().cpu()
    param.add_(noise.to(param.device, param.dtype))

