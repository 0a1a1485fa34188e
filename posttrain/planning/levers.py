"""What each memory lever saves: per-device training memory as formulas, for planning.

`training_memory(config, ...)` gives the bytes one training device holds, by component, for a
model config (no weights needed: parameter counts come from the meta device), ZeRO stage, data-
parallel size and the levers (LoRA, activation checkpointing, ZeRO-Offload, colocation). The terms:

  P  total parameters, P_t trainable ones (P without LoRA; the adapters' count with it)
  N  data-parallel devices, w bytes per weight (2 for bf16, 4 for fp32)
  weights      P·w            ZeRO-3: P·w/N      ZeRO-3 + offload_params: ~2 layers gathered at a time
  gradients    P_t·(w+4)/N    (ZeRO-2 and 3 partition them, and keep the partition's fp32 copy for
                              the optimizer; 0 for frozen parameters)
  optimizer    P_t·12/N       (DeepSpeed's fp32 master partition + Adam m, v, in fp32 training too)
                              offload_optimizer: 0 on the device (P_t·12/N on the host)
  activations  T·L·a (T tokens per micro-batch, L layers, a bytes per token per layer, below)
               activation checkpointing: T·L·h·w + T·a (layer inputs kept, one layer recomputed at a time)
  logits       T·V·4 (fp32 log-softmax over the vocabulary; not reduced by any lever here)
  colocated rollout/teacher: while the trainer steps they sleep (vLLM level 1: weights and KV cache
               leave the device), so the device's peak is max(trainer, resident + rollout, resident +
               teacher) instead of the sum of all three (resident = the trainer's weights + gradients +
               optimizer state); an engine's own share is `gpu_memory_utilization` x device memory.

These are estimates for planning (allocator fragmentation, communication buckets and the CUDA
context, ~1-3 GB, come on top); `benchmarks/memory_levers.py` measures the tiny model.
"""

from __future__ import annotations

from posttrain.config import LoRAConfig
from posttrain.models.params import count_parameters
from posttrain.train.lora import apply_lora


def lora_parameters(config, lora: LoRAConfig) -> int:
    """Trainable adapter parameters of `lora` on a model config, counted by peft on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = apply_lora(AutoModelForCausalLM.from_config(config), lora)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def activation_bytes_per_token_layer(config, w: int) -> float:
    """Saved activations of one qwen3_moe decoder layer per token (elements x w bytes), as autograd
    keeps them with SDPA/flash attention (no T² term): attention — the norm's input and output, q/k/v
    before and after their norms and rotary, the attention output (3h + 5q + 5kv); MoE — the norm's
    input and output, the residual, the router's fp32 logits, and for each of the top-k experts a
    token reaches its input copy, gate/up output, the activation's inputs and output, and the
    weighted output (k·(2h + 5ff))."""
    h = config.hidden_size
    head_dim = getattr(config, "head_dim", h // config.num_attention_heads)
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    k = getattr(config, "num_experts_per_tok", 1)
    ff = getattr(config, "moe_intermediate_size", 0) or config.intermediate_size
    attention = 3 * h + 5 * q + 5 * kv
    moe = 3 * h + k * (2 * h + 5 * ff)
    return (attention + moe) * w + getattr(config, "num_experts", 0) * 4


def training_memory(config, *, num_devices: int = 1, zero_stage: int = 2, bf16: bool = True,
                    tokens_per_micro_batch: int = 8192, lora: LoRAConfig | None = None,
                    activation_checkpointing: bool = False, offload_optimizer: bool = False,
                    offload_params: bool = False) -> dict[str, float]:
    """Bytes on one training device, by component, and their `total`; `host` is what the offload moved."""
    n, w, tokens, layers = num_devices, (2 if bf16 else 4), tokens_per_micro_batch, config.num_hidden_layers
    total = count_parameters(config)["total"]
    trainable = lora_parameters(config, lora) if lora is not None and lora.enabled else total
    if zero_stage == 3 and offload_params:
        embedding = config.vocab_size * config.hidden_size
        weights = 2 * max((total - embedding) / layers, embedding) * w  # the gathered working set
    elif zero_stage == 3:
        weights = total * w / n
    else:
        weights = total * w
    optimizer = trainable * 12 / n
    per_layer = activation_bytes_per_token_layer(config, w)
    if activation_checkpointing:
        activations = tokens * layers * config.hidden_size * w + tokens * per_layer
    else:
        activations = tokens * layers * per_layer
    memory = {
        "weights": weights,
        "gradients": trainable * (w + 4) / n,
        "optimizer": 0.0 if offload_optimizer else optimizer,
        "activations": activations,
        "logits": tokens * config.vocab_size * 4,
    }
    memory["total"] = sum(memory.values())
    memory["host"] = (optimizer if offload_optimizer else 0.0) + (total * w / n if offload_params else 0.0)
    return memory


def colocated_peak(trainer: dict[str, float], rollout_bytes: float, teacher_bytes: float) -> float:
    """The peak of one device shared by trainer, rollout engine and teacher that take turns: the
    trainer's weights, gradients and optimizer state stay resident (offload them to shrink this);
    its activations exist only while it steps, when the rollout and teacher sleep."""
    resident = trainer["weights"] + trainer["gradients"] + trainer["optimizer"]
    return max(trainer["total"], resident + rollout_bytes, resident + teacher_bytes)
