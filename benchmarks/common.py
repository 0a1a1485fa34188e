"""What the speed benchmarks share: the benchmark-sized qwen3_moe model, the environment, and timing helpers.

Every benchmark compares posttrain with its peer in the same process, on the same model files, data,
precision and optimizer, and prints a ratio: timings from different runs or machines are never compared.
"""

from __future__ import annotations

import os
import platform
import statistics
from datetime import date
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "runs" / "bench"

# Large enough that compute, not Python overhead, dominates a CPU step (the example shape).
BENCH_SHAPE = dict(hidden_size=256, num_hidden_layers=8, num_experts=32, num_experts_per_tok=4,
                   moe_intermediate_size=256, intermediate_size=512, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64)


def tiny_suite() -> dict[str, Path]:
    from posttrain.models.tiny import build_tiny_suite

    return build_tiny_suite(ROOT / "models" / "tiny", seed=0)


def bench_model(name: str = "moe-256x8", seed: int = 0, **shape) -> Path:
    """A randomly initialised qwen3_moe of the benchmark shape, saved with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3MoeConfig

    path = BENCH_DIR / name
    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tiny_suite()["student"])
    student = Qwen3MoeConfig.from_pretrained(tiny_suite()["student"])
    config = Qwen3MoeConfig(
        vocab_size=student.vocab_size, norm_topk_prob=True, decoder_sparse_step=1, tie_word_embeddings=True,
        max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        router_aux_loss_coef=0.001, bos_token_id=None, eos_token_id=student.eos_token_id,
        pad_token_id=student.pad_token_id, **{**BENCH_SHAPE, **shape})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = AutoModelForCausalLM.from_pretrained(tiny_suite()["student"]).generation_config
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def param_counts(path: Path) -> dict[str, int]:
    """Total and active-per-token parameter counts of a model directory."""
    from transformers import AutoConfig

    from posttrain.models.params import count_parameters

    return count_parameters(AutoConfig.from_pretrained(path))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, {date.today().isoformat()}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_runs(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)
