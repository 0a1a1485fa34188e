"""The card-scale GPU check, in one call on one H100/H200 (under 8 minutes): the figures a CPU cannot give.

    python benchmarks/gpu_check.py            # on a CUDA GPU; prints the table for docs/performance.md
    python benchmarks/gpu_check.py --smoke    # on a CPU at a toy size: checks the code, measures nothing

Only torch and transformers (no Ray, DeepSpeed or vLLM, nothing downloaded; the project's source is
imported from this checkout). Three measurements:
1. Marco-Mini's real layer shape (`posttrain.models.architectures.MARCO_MINI`: hidden 1,024, 256 experts
   x 768 with 8 active, 16 q / 8 kv heads of dim 128), a few layers in bf16, forward + backward on packed
   8,192-token rows: tokens/s and MFU on active-parameter FLOPs, per experts implementation
   (`benchmarks/gpu_moe_layers.py`'s code).
2. The loss's peak memory and time over its inputs at 8,192 and 16,384 target tokens at V = 151,936, bf16:
   the whole-row logits (the trainer's path before issue 15) against `posttrain.losses.chunked`, with and
   without HeadInPlace (`benchmarks/loss_memory.py`'s measurement, read from `torch.cuda.max_memory_allocated`).
3. The packed attention: the same layers with `sdpa_packed` (posttrain's default), the same with its plan
   made per layer (as before issue 24: a device sync and host-to-device copies in every layer), transformers'
   `sdpa` (a block-causal mask over the whole row) and `flash_attention_2` (varlen, where flash-attn is installed).
Then a verdict table; exit 1 where a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine  # noqa: E402
from benchmarks.gpu_moe_layers import experts_implementations, layer_config, train_layers  # noqa: E402
from benchmarks.loss_memory import measure  # noqa: E402

GPU_ONLY = ("tokens/s and MFU (bf16 on a CPU is emulated or slow, and MFU is against a GPU's peak)",
            "the loss's peak memory at 8,192 and 16,384 tokens at the real vocabulary (the smoke run uses a toy one)",
            "flash_attention_2 (CUDA only) and the attention speed ratios")
TOY = dict(hidden_size=128, num_experts=16, moe_intermediate_size=64, vocab_size=1024, num_attention_heads=4,
           num_key_value_heads=2, head_dim=32)


def layers_table(config, args, device) -> list[dict]:
    rows = []
    for impl in ["eager"] if args.smoke else experts_implementations():  # the smoke run: one, to stay short
        try:
            rows.append(train_layers(config, args, device, impl))
        except Exception as e:  # an implementation this GPU / torch lacks: say so, go on
            rows.append({"impl": impl, "failed": f"{type(e).__name__}: {str(e)[:100]}"})
    return rows


@contextlib.contextmanager
def plan_per_layer():
    """sdpa_packed as it was before issue 24 row 12: the segments read (`.tolist()`, a device sync) and the
    plan copied to the device in every layer, forward and recompute; the peer of today's once-per-forward."""
    from posttrain.models import packed_attention

    cached = packed_attention._device_plan

    def every_time(position_ids, B, T, device):
        packed_attention._LAST_PLAN[:] = [None, -1, None, None]
        return cached(position_ids, B, T, device)

    packed_attention._device_plan = every_time
    try:
        yield
    finally:
        packed_attention._device_plan = cached


def attention_table(config, args, device, impl: str) -> list[dict]:
    """The layers with each attention implementation, the fastest experts implementation fixed."""
    names = ["sdpa_packed", "sdpa_packed (plan per layer)", "sdpa"] + (
        ["flash_attention_2"] if device.type == "cuda" and importlib.util.find_spec("flash_attn") else [])
    packed, rows = config._attn_implementation, []
    for name in names:
        config._attn_implementation = packed if name.startswith("sdpa_packed") else name
        try:
            with plan_per_layer() if name.endswith("(plan per layer)") else contextlib.nullcontext():
                rows.append({"attention": name, **train_layers(config, args, device, impl)})
        except Exception as e:
            rows.append({"attention": name, "failed": f"{type(e).__name__}: {str(e)[:100]}"})
    config._attn_implementation = packed
    return rows


def loss_table(args, device) -> list[dict]:
    rows = []
    for tokens in args.loss_tokens:
        margs = SimpleNamespace(threads=torch.get_num_threads(), device=str(device), dtype=args.loss_dtype, chunk=args.chunk,
                                loss="nll", vocab=args.vocab, hidden=args.hidden)
        row = {"tokens": tokens}
        for arm in ("before", "after", "in_place"):
            started = time.perf_counter()
            try:
                row[arm] = measure(arm, tokens, margs)["peak_bytes"] / 2**30
            except torch.OutOfMemoryError:
                row[arm] = float("nan")
            row[f"{arm}_s"] = time.perf_counter() - started
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def print_tables(layers, attention, losses, args) -> None:
    print("\nMarco-Mini layers, forward + backward (bf16, sdpa_packed)")
    print("| experts implementation | tokens/s | MFU (active FLOPs) | peak GiB |\n|---|---|---|---|")
    for r in layers:
        print(f"| {r['impl']} | failed: {r['failed']} |" if "failed" in r else
              f"| {r['impl']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} |")
    base = next((r["tokens_per_s"] for r in attention if r["attention"] == "sdpa_packed" and "failed" not in r), None)
    print(f"\nPacked attention ({args.docs} documents per {args.seq}-token row), the same layers")
    print("| attention | tokens/s | vs sdpa_packed |\n|---|---|---|")
    for r in attention:
        print(f"| {r['attention']} | failed: {r['failed']} |" if "failed" in r else
              f"| {r['attention']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x |")
    print(f"\nLoss peak memory over its inputs (V = {args.vocab:,}, H = {args.hidden}, {args.loss_dtype}, "
          f"chunks of {args.chunk})")
    print("| target tokens | whole-row logits (GiB, s) | chunked (GiB, s) | chunked + HeadInPlace (GiB, s) | "
          "best / whole |\n|---|---|---|---|---|")
    for r in losses:
        print(f"| {r['tokens']:,} | {r['before']:.2f}, {r['before_s']:.2f} | {r['after']:.2f}, {r['after_s']:.2f} | "
              f"{r['in_place']:.2f}, {r['in_place_s']:.2f} | {min(r['after'], r['in_place']) / r['before']:.2f} |")


def verdicts(layers, attention, losses, smoke: bool) -> list[tuple[str, str, str]]:
    """(check, verdict, why): what the run says about the paths that only a GPU exercises. A smoke run's
    comparisons are toy-sized and unwarmed: only whether the code ran is a verdict there."""

    def judged(good: bool, bad: str = "FAIL") -> str:
        return "n/a (smoke)" if smoke else "ok" if good else bad

    out = []
    for r in layers:
        out.append((f"experts '{r['impl']}' bf16 forward + backward", "FAIL" if "failed" in r else "ok",
                    r.get("failed", f"{r.get('tokens_per_s', 0):,.0f} tokens/s")))
    speed = {r["attention"]: r["tokens_per_s"] for r in attention if "failed" not in r}
    for r in attention:
        if "failed" in r:
            out.append((f"attention '{r['attention']}'", "FAIL", r["failed"]))
    if "sdpa_packed" in speed and "sdpa" in speed:
        ratio = speed["sdpa_packed"] / speed["sdpa"]
        out.append(("sdpa_packed against sdpa", judged(ratio >= 1, "slower"), f"{ratio:.2f}x"))
    if "sdpa_packed" in speed and "sdpa_packed (plan per layer)" in speed:
        ratio = speed["sdpa_packed"] / speed["sdpa_packed (plan per layer)"]
        out.append(("sdpa_packed plan once per forward vs per layer", judged(ratio >= 0.97, "slower"), f"{ratio:.2f}x"))
    for r in losses:
        best = min(r["after"], r["in_place"])
        out.append((f"chunked loss peak at {r['tokens']:,} tokens", judged(best < r["before"]),
                    f"{best:.2f} GiB vs {r['before']:.2f} GiB whole-row"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--docs", type=int, default=4, help="documents packed into one row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--loss-tokens", type=int, nargs="*", default=[8192, 16384])
    parser.add_argument("--chunk", type=int, default=1024, help="trainer.loss_chunk_tokens")
    parser.add_argument("--smoke", action="store_true", help="toy size on the CPU: checks the code, measures nothing")
    args = parser.parse_args()
    args.vocab, args.hidden, args.loss_dtype = 151936, 1024, "bfloat16"

    from posttrain.models.architectures import MARCO_MINI

    if args.smoke:
        device = torch.device("cpu")
        args.seq, args.layers, args.warmup, args.iters = 256, 1, 0, 1
        args.vocab, args.hidden, args.loss_dtype, args.loss_tokens, args.chunk = 1024, 128, "float32", [512, 1024], 128
        config = layer_config(MARCO_MINI, 1, **TOY)
    elif not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU (none here); `--smoke` checks the code on a CPU at a toy size.")
    else:
        device = torch.device("cuda", 0)
        config = layer_config(MARCO_MINI, args.layers)
    started = time.perf_counter()
    print(f"{machine()}; {args.layers} Marco-Mini layers, rows of {args.seq} tokens ({args.docs} documents)", flush=True)
    if args.smoke:
        print("SMOKE (CPU, toy sizes): every figure below checks the code only. Needs a GPU: " + "; ".join(GPU_ONLY))
    layers = layers_table(config, args, device)
    done = [r for r in layers if "failed" not in r]
    fastest = max(done, key=lambda r: r["tokens_per_s"])["impl"] if done else "eager"
    attention = attention_table(config, args, device, fastest)
    losses = loss_table(args, device)
    print_tables(layers, attention, losses, args)
    checks = verdicts(layers, attention, losses, args.smoke)
    print("\nVerdicts" + (" (SMOKE: the code ran; the figures mean nothing)" if args.smoke else ""))
    print("| check | verdict | measured |\n|---|---|---|")
    for check, verdict, why in checks:
        print(f"| {check} | {verdict} | {why} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if any(verdict == "FAIL" for _, verdict, _ in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
