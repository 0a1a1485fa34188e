"""The DeepSpeed side of a trainer worker: its config dict, the optimizer and schedule it wraps,
and the MoE-specific ZeRO-3 setting."""

from __future__ import annotations

import torch

from posttrain.config import DeepSpeedConfig, OptimConfig


def deepspeed_config(ds: DeepSpeedConfig, optim: OptimConfig, pin_memory: bool = False) -> dict:
    """`pin_memory`: page-locked host buffers for the offload copies (on a GPU; a CPU has none)."""
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
    # ZeRO-Offload: DeepSpeed's own blocks; the optimizer then steps on the host copies.
    if ds.offload_optimizer != "none":
        config["zero_optimization"]["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": pin_memory}
        # DeepSpeed insists on its DeepSpeedCPUAdam (a compiled op) for offloaded state unless told
        # otherwise; `host_optimizer` decides (torch's AdamW steps the same state, slower per element).
        config["zero_force_ds_cpu_optimizer"] = False
    if ds.offload_params != "none":
        config["zero_optimization"]["offload_param"] = {"device": ds.offload_params, "pin_memory": pin_memory}
    for key, value in ds.extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def init_distributed(device_type: str) -> None:
    """`deepspeed.init_distributed` without the shared-memory all-reduce op on a CPU.

    DeepSpeed's CPU backend JIT-compiles `deepspeed_shm_comm` at init, under a lock file in
    ~/.cache/torch_extensions that only the building process removes: one killed mid-build (a
    Ctrl-C, a fault test, a session ended) leaves it behind, and every later run on that machine
    waits for it forever (a CI run hung so). Training never calls the op (only DeepSpeed's
    `inference_all_reduce` does), so it is marked incompatible and not built; gloo all-reduces.
    """
    import deepspeed
    import deepspeed.ops

    if device_type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # one dict, kept by deepspeed.ops
    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")


def collective_device(backend: str, device: torch.device) -> torch.device:
    """Where a tensor for a collective of the process group must live: NCCL reduces CUDA tensors only (a CPU
    one fails with "No backend type associated with device type cpu"), gloo CPU ones. `device`: this rank's."""
    if backend == "nccl":
        if device.type != "cuda":
            raise ValueError(f"an NCCL process group on a {device.type} rank: NCCL needs CUDA tensors")
        return device
    return torch.device("cpu")


def make_optimizer(params, optim: OptimConfig, ds: DeepSpeedConfig | None = None) -> torch.optim.Optimizer:
    """torch's AdamW; with the optimizer offloaded, DeepSpeedCPUAdam where `host_optimizer` picks it."""
    if ds is not None and host_optimizer(ds) == "deepspeed":
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-compiles the op on first use (gcc, ~2 min)

        return DeepSpeedCPUAdam(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                                weight_decay=optim.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             weight_decay=optim.weight_decay, fused=optim.fused or None)


def host_optimizer(ds: DeepSpeedConfig) -> str:
    """Which AdamW steps the offloaded optimizer state: "deepspeed" (DeepSpeedCPUAdam, the same update
    vectorised for the host) or "torch". `auto`: DeepSpeed's on a GPU machine, where the host step of
    a large model needs it; torch's on a CPU-only machine, where the host is the device anyway and
    building the op (checked: it compiles here with gcc) costs ~2 minutes on 2 cores."""
    if ds.offload_optimizer == "none":
        return "torch"
    if ds.host_optimizer == "auto":
        return "deepspeed" if torch.cuda.is_available() else "torch"
    return ds.host_optimizer


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
