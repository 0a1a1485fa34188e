"""Marco-Mini's real layer shape on one CUDA GPU: training tokens/s, MFU and the card's implied rate.

    python benchmarks/gpu_moe_layers.py [--layers 4] [--seq 8192] [--docs 4] [--peak-tflops 989]

A few `qwen3_moe` decoder layers of Marco-Mini's shape (hidden 1024, 256 experts x 768 with 8 active,
16 q / 8 kv heads of dim 128) in bf16, fed packed 8,192-token rows (`--docs` documents per row,
position ids restarting per document, as posttrain packs them; attention `sdpa_packed`, the trainer's
default), forward + backward, for every experts
implementation transformers offers (`eager` and the registered ones: grouped_mm, batched_mm, ...).
Reports tokens/s, MFU on active-parameter FLOPs (6 x active weights per token + causal attention
within each document), and the full 28-layer model's tokens/s per GPU extrapolated from the per-layer
time plus a measured tied LM head with cross-entropy, next to the card's implied rate: 4,000 steps x
512 x 8,192 tokens in about 24 h on 64 GPUs = about 3,000 tokens/s/GPU.

Then the teacher side: prefill log-prob throughput (no grad, bf16) of a few layers of Qwen3-30B-A3B's
shape (hidden 2048, 128 experts x 768 with 8 active, 32 q / 4 kv heads), extrapolated to its 48 layers.

Needs a CUDA GPU; `--smoke` runs the same code on a CPU at a toy size (a check that it runs, not a
measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BENCH_DIR, machine  # noqa: E402

CARD_TOKENS_PER_S_PER_GPU = 4000 * 512 * 8192 / (24 * 3600 * 64)
QWEN3_30B_A3B = dict(hidden_size=2048, moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                     num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8)


def layer_config(base: dict, layers: int, **override):
    """A qwen3_moe config with posttrain's training attention over packed rows (`sdpa_packed`)."""
    from transformers import Qwen3MoeConfig

    from posttrain.models.packed_attention import register

    spec = {k: v for k, v in base.items() if k != "model_type"} | override | {"num_hidden_layers": layers}
    config = Qwen3MoeConfig(**spec)
    config._attn_implementation = register()
    return config


def packed_row(seq: int, docs: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    doc = seq // docs
    input_ids = torch.randint(0, vocab, (1, doc * docs), device=device)
    position_ids = torch.arange(doc, device=device).repeat(docs)[None]
    return input_ids, position_ids


def active_flops_per_token_per_layer(config, doc_len: int, train: bool) -> float:
    """One decoder layer's share of posttrain's FLOP count (`posttrain.models.params`: 6 x active weights
    + causal attention within a document of `doc_len`), without the (tied) embedding / LM head;
    a forward pass is a third of forward + backward."""
    from posttrain.models.params import train_flops_per_token

    layers_only = train_flops_per_token(config, doc_len) - 6 * config.vocab_size * config.hidden_size
    return layers_only / config.num_hidden_layers / (1 if train else 3)


def time_it(fn, warmup: int, iters: int, device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iters


def experts_implementations() -> list[str]:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ["eager"] + sorted(k for k in ALL_EXPERTS_FUNCTIONS.keys() if k != "deepgemm")


def train_layers(config, args, device, impl: str) -> dict:
    from transformers import Qwen3MoeModel

    torch.manual_seed(0)
    model = Qwen3MoeModel(config).to(device=device, dtype=torch.bfloat16)
    model.set_experts_implementation(impl)
    model.train()
    input_ids, position_ids = packed_row(args.seq, args.docs, config.vocab_size, device)

    def step():
        hidden = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        hidden.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    seconds = time_it(step, args.warmup, args.iters, device)
    tokens = input_ids.numel()
    per_layer_s = seconds / config.num_hidden_layers
    flops = active_flops_per_token_per_layer(config, args.seq // args.docs, train=True) * tokens * config.num_hidden_layers
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return {"impl": impl, "tokens_per_s": tokens / seconds, "per_layer_s": per_layer_s,
            "mfu": flops / seconds / (args.peak_tflops * 1e12), "peak_gib": peak}


def lm_head_seconds(config, args, device) -> float:
    """Tied LM head + cross-entropy over the row, forward + backward (the part the layers leave out)."""
    weight = torch.randn(config.vocab_size, config.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
    hidden = torch.randn(args.seq, config.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, config.vocab_size, (args.seq,), device=device)

    def step():
        logits = hidden @ weight.T
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        weight.grad = hidden.grad = None

    return time_it(step, args.warmup, args.iters, device)


def teacher_prefill(config, args, device, impl: str) -> dict:
    from transformers import Qwen3MoeModel

    torch.manual_seed(0)
    model = Qwen3MoeModel(config).to(device=device, dtype=torch.bfloat16).eval()
    model.set_experts_implementation(impl)
    input_ids, position_ids = packed_row(args.seq, args.docs, config.vocab_size, device)

    @torch.no_grad()
    def step():
        model(input_ids=input_ids, position_ids=position_ids, use_cache=False)

    seconds = time_it(step, args.warmup, args.iters, device)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"impl": impl, "tokens_per_s": input_ids.numel() / seconds, "per_layer_s": seconds / config.num_hidden_layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--docs", type=int, default=4, help="documents packed into one row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--smoke", action="store_true", help="toy size on the CPU: checks the code, measures nothing")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "gpu_moe_layers.json")
    args = parser.parse_args()

    from posttrain.models.architectures import MARCO_MINI

    if args.smoke:
        device = torch.device("cpu")
        args.seq, args.layers, args.warmup, args.iters = 256, 1, 0, 1
        student = layer_config(MARCO_MINI, 1, hidden_size=128, num_experts=16, moe_intermediate_size=64,
                               vocab_size=1024, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
        teacher = layer_config(MARCO_MINI | QWEN3_30B_A3B, 1, hidden_size=128, num_experts=16, vocab_size=1024,
                               moe_intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    elif not torch.cuda.is_available():
        sys.exit("gpu_moe_layers.py needs a CUDA GPU (none here); docs/performance.md says it has not been run "
                 "on this machine. `--smoke` checks the code on a CPU at a toy size.")
    else:
        device = torch.device("cuda", 0)
        student = layer_config(MARCO_MINI, args.layers)
        teacher = layer_config(MARCO_MINI | QWEN3_30B_A3B, args.layers)
    print(f"{machine()}; {args.layers} layers, rows of {args.seq} tokens ({args.docs} documents), bf16", flush=True)

    head_s = lm_head_seconds(student, args, device)
    rows = []
    for impl in experts_implementations():
        try:
            result = train_layers(student, args, device, impl)
        except Exception as e:  # an implementation this GPU / torch lacks: say so, go on
            print(f"| {impl} | failed: {type(e).__name__}: {str(e)[:120]} |", flush=True)
            continue
        full_s_per_token = (result["per_layer_s"] * MARCO_MINI["num_hidden_layers"] + head_s) / args.seq
        result["full_model_tokens_per_s"] = 1 / full_s_per_token
        rows.append(result)
    print("\nMarco-Mini layers, forward + backward (bf16)")
    print("| experts implementation | tokens/s (these layers) | MFU (active FLOPs) | peak GiB | "
          "full 28-layer model tokens/s/GPU (extrapolated) | vs card's ~3,034 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} | "
              f"{r['full_model_tokens_per_s']:,.0f} | {r['full_model_tokens_per_s'] / CARD_TOKENS_PER_S_PER_GPU:.2f}x |")
    print(f"(tied LM head + cross-entropy over {args.seq} tokens: {head_s * 1e3:.1f} ms per row)")

    teacher_rows = []
    for impl in experts_implementations():
        try:
            result = teacher_prefill(teacher, args, device, impl)
        except Exception as e:
            print(f"| {impl} | failed: {type(e).__name__}: {str(e)[:120]} |", flush=True)
            continue
        result["full_model_tokens_per_s"] = 1 / (result["per_layer_s"] * QWEN3_30B_A3B["num_hidden_layers"] / args.seq)
        teacher_rows.append(result)
    print("\nQwen3-30B-A3B-shaped teacher layers, prefill log-probs (no grad, bf16)")
    print("| experts implementation | tokens/s (these layers) | full 48-layer teacher tokens/s/GPU (extrapolated, "
          "without the LM head) |\n|---|---|---|")
    for r in teacher_rows:
        print(f"| {r['impl']} | {r['tokens_per_s']:,.0f} | {r['full_model_tokens_per_s']:,.0f} |")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                     "student": rows, "teacher": teacher_rows, "lm_head_s": head_s}, indent=2))


if __name__ == "__main__":
    main()
