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
               activation checkpointing: T·L·(h·w + 4E) + T·a (each layer's input kept, and its router
               logits, which the step returns for the aux loss and expert counts; one layer recomputed at
               a time)
  loss         C·V·k + 2·V·h·w + 2·T·h·w: the chunked loss (posttrain.losses.chunked) at its peak — one
               chunk of C = trainer.loss_chunk_tokens target positions, k bytes per logit of it (measured,
               LOSS_BYTES_PER_CHUNK_LOGIT), the LM head's weight gradient summed over the chunks (the sum
               and one chunk's part, before ZeRO reduces it) and the hidden states at the targets with
               their gradient. Not T·V: no whole-row logits exist.
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

# The chunked loss's peak per logit of one chunk: the recomputed chunk's logits, their fp32 log-softmax
# and its gradient. Measured by benchmarks/loss_memory.py (CPU, fp32, V 151,936, H 1,024): 1.98 GB at
# 512-token chunks and 2.60 GB at 1,024, of which 2·V·h·4 = 1.24 GB is the head's gradient; rounded up.
LOSS_BYTES_PER_CHUNK_LOGIT = 12.5


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


def loss_memory(config, chunk_tokens: int, tokens: int, w: int) -> float:
    """The chunked loss's peak bytes (the `loss` term above)."""
    h, vocab = config.hidden_size, config.vocab_size
    return chunk_tokens * vocab * LOSS_BYTES_PER_CHUNK_LOGIT + 2 * vocab * h * w + 2 * tokens * h * w


def training_memory(config, *, num_devices: int = 1, zero_stage: int = 2, bf16: bool = True,
                    tokens_per_micro_batch: int = 8192, lora: LoRAConfig | None = None,
                    activation_checkpointing: bool = False, offload_optimizer: bool = False,
                    offload_params: bool = False, loss_chunk_tokens: int = 512) -> dict[str, float]:
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
        router_logits = 4 * getattr(config, "num_experts", 0)
        activations = tokens * layers * (config.hidden_size * w + router_logits) + tokens * per_layer
    else:
        activations = tokens * layers * per_layer
    memory = {
        "weights": weights,
        "gradients": trainable * (w + 4) / n,
        "optimizer": 0.0 if offload_optimizer else optimizer,
        "activations": activations,
        "loss": loss_memory(config, loss_chunk_tokens, tokens, w),
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
