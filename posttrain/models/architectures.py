"""Architectures named in configs, so a config can be planned and checked without downloading it.

Values are the model cards' (see shared/seeds): Marco-Mini-Base is a Qwen3-MoE, upcycled from
Qwen3-0.6B-Base, 28 layers, 256 experts of width 768 with 8 active, tied embeddings.
"""

from __future__ import annotations

MARCO_MINI = dict(
    model_type="qwen3_moe", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
    moe_intermediate_size=768, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, num_experts=256, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
    tie_word_embeddings=True, max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    rms_norm_eps=1e-6,
)

KNOWN = {"marco_mini": MARCO_MINI}


def architecture_config(name: str):
    """A transformers config for a named architecture (no weights, no hub)."""
    from transformers import AutoConfig

    if name not in KNOWN:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(KNOWN)}")
    spec = dict(KNOWN[name])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)
