"""The DeepSpeed side of a trainer worker: its config dict, the optimizer and schedule it wraps,
and the MoE-specific ZeRO-3 setting."""

from __future__ import annotations

import torch

from posttrain.config import DeepSpeedConfig, OptimConfig


def deepspeed_config(ds: DeepSpeedConfig, optim: OptimConfig) -> dict:
    config = {
        # The trainer packs a variable number of micro-batches per step, so it owns the
        # accumulation boundary: backward() only accumulates, step() reduces and updates.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {
            "stage": ds.zero_stage,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        # The torch AdamW we pass in is fine under ZeRO; DeepSpeed only "tests" its own.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": ds.bf16},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    for key, value in ds.extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             weight_decay=optim.weight_decay, fused=optim.fused or None)


def make_schedule(optimizer, optim: OptimConfig, total_steps: int):
    """transformers' schedules (DeepSpeed's WarmupCosineLR insists on >= 2 warm-up steps)."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    if optim.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, optim.warmup_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, optim.warmup_steps, max(1, total_steps), min_lr=optim.min_lr
    )


def sparse_moe_block_classes(model) -> list[type]:
    """The sparse MoE block classes of a model (Qwen3MoeSparseMoeBlock, Qwen3NextSparseMoeBlock, ...).

    ZeRO-3 prefetches parameters module by module; inside an MoE block only the routed experts run,
    so ranks disagree on which parameters to gather and hang. Marking the whole block a leaf makes
    ZeRO-3 gather it at once on every rank.
    """
    return sorted({type(m) for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")},
                  key=lambda c: c.__name__)
