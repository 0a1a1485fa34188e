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

# The cascade's teachers, from their config.json on the hub (Qwen3 family, vocabulary 151,936).
QWEN3_30B_A3B = dict(
    model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
    moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
    head_dim=128, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
    tie_word_embeddings=False, max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7}, rms_norm_eps=1e-6,
)
# Qwen3-Next: 3 of every 4 layers are gated-DeltaNet linear attention (a fixed-size state, no KV cache),
# every 4th is gated full attention; 512 experts of width 512, 10 active, plus one shared expert.
QWEN3_NEXT_80B_A3B = dict(
    model_type="qwen3_next", vocab_size=151936, hidden_size=2048, intermediate_size=5120,
    moe_intermediate_size=512, shared_expert_intermediate_size=512, num_hidden_layers=48,
    num_attention_heads=16, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
    linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
    full_attention_interval=4, num_experts=512, num_experts_per_tok=10, norm_topk_prob=True,
    decoder_sparse_step=1, tie_word_embeddings=False, max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25}, rms_norm_eps=1e-6,
)
KNOWN = {"marco_mini": MARCO_MINI, "qwen3_30b_a3b": QWEN3_30B_A3B, "qwen3_next_80b_a3b": QWEN3_NEXT_80B_A3B}
# Hub ids (and the SFT export's default path) the configs name, for planning without downloading.
HUB_IDS = {
    "AIDC-AI/Marco-Mini-Base": "marco_mini",
    "AIDC-AI/Marco-Mini-Instruct": "marco_mini",
    "Qwen/Qwen3-30B-A3B-Instruct-2507": "qwen3_30b_a3b",
    "Qwen/Qwen3-30B-A3B": "qwen3_30b_a3b",
    "Qwen/Qwen3-Next-80B-A3B-Instruct": "qwen3_next_80b_a3b",
}


def architecture_config(name: str):
    """A transformers config for a named architecture (no weights, no hub)."""
    from transformers import AutoConfig

    if name not in KNOWN:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(KNOWN)}")
    spec = dict(KNOWN[name])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)
