"""LoRA through peft: wrap the trainer's model, and turn its weights back into the base model's.

The trainer trains a `PeftModel` (frozen base, rank-r adapters); everything downstream — the
rollout engines, vLLM, the merged HF export — wants plain weights under the base model's names.
`merged_state_dict` builds them as base + Δ, with Δ from peft's own `get_delta_weight` of each
adapted layer (nn.Linear and the `ParamWrapper` of raw parameters alike), computed on a copy:
the trainer's base weights are never merged in place and unmerged, which would not give them
back bit for bit.
"""

from __future__ import annotations

import re

import torch

from posttrain.config import LoRAConfig

_BASE_LAYER = re.compile(r"\.base_layer(?=\.|$)")


def apply_lora(model, cfg: LoRAConfig):
    """The model wrapped with adapters; every base parameter frozen (peft's `get_peft_model`)."""
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          # [] (not None, which would pick peft's per-architecture default): only target_parameters
                          target_modules=list(cfg.target_modules),
                          target_parameters=list(cfg.target_parameters) or None, bias="none")
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
        raise ValueError(f"lora: target_modules {cfg.target_modules} / target_parameters {cfg.target_parameters} "
                         f"do not match the model: {e}") from None


def base_name(name: str) -> str:
    """A PeftModel tensor name as the base model names it (`base_model.model.` and `.base_layer` dropped)."""
    name = name.removeprefix("base_model.model.")
    return _BASE_LAYER.sub("", name)


def is_adapter(name: str) -> bool:
    return ".lora_" in name


def adapter_delta(name: str, layer) -> tuple[str, torch.Tensor]:
    """The base-model name of the tensor LoRA layer `name` adapts, and its delta: peft's `get_delta_weight`
    (scaled B·A) summed over the active adapters (the layer's parameters gathered, under ZeRO-3)."""
    return base_name(name) + "." + getattr(layer, "parameter_name", "weight"), \
        sum(layer.get_delta_weight(key) for key in layer.active_adapters)


@torch.no_grad()
def merged_state_dict(peft_model, state: dict[str, torch.Tensor] | None, zero3: bool) -> dict[str, torch.Tensor] | None:
    """`state` (the PeftModel's full state dict on rank 0, None on other ranks) as the merged base model's.

    Under ZeRO-3 every rank must call: each adapted layer's adapter weights are gathered in turn.
    """
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if zero3:
            import deepspeed

            # ParamWrapper also reads its (partitioned) base parameter for the delta's shape.
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                target, delta = adapter_delta(name, module)
        else:
            target, delta = adapter_delta(name, module)
        if state is not None:
            deltas[target] = delta.detach().float().cpu()
    if state is None:
        return None
    merged = {}
    for name, tensor in state.items():
        if is_adapter(name):
            continue
        key = base_name(name)
        merged[key] = (tensor.float() + deltas[key]).to(tensor.dtype) if key in deltas else tensor
    return merged


def check_lora(model_cfg, cfg: LoRAConfig) -> None:
    """Apply `cfg` to the model's architecture on the meta device (no weights): a target that matches
    nothing fails here, before Ray or a worker starts, with peft's message."""
    if not cfg.enabled:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
    with torch.device("meta"):
        apply_lora(AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code), cfg)
