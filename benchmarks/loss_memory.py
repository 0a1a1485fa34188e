"""Peak memory of the trainer's loss at Qwen3's vocabulary: the whole-row logits (before) against the
chunked LM head + loss (after, `posttrain.losses.chunked`), for rows of 2,048 / 8,192 / 16,384 tokens.

    python benchmarks/loss_memory.py                 # ~20 min on 2 CPU cores (the matmuls: ~35 TFLOP)
    python benchmarks/loss_memory.py --tokens 2048 --chunk 512 --loss topk

Every measurement runs in a fresh subprocess: the inputs (hidden states [T, H] and the LM head's weight
[V, H], both requiring grad, and the targets) are made, the process's resident set is read, then the
loss runs forward and backward once, and the peak is the process's high-water mark (`ru_maxrss`) less
that resident set. tracemalloc would not see torch's CPU allocations; torch has no CPU allocator
statistics; a fresh process per measurement keeps one arm's high-water mark out of the next. The
peak includes the head weight's gradient (V x H, the same in both arms: it is the model's gradient),
not the inputs. On CUDA the same code reads `torch.cuda.max_memory_allocated` instead.

"Before" is the trainer's path until issue 15: the LM head over every position of the row, the rows
that carry a target selected, the loss on them (here every position carries one: an OPD row is mostly
response tokens). Where it would not fit this machine next to other work (`--before-limit-gb`), its
value is projected from a linear fit of the measured ones (peak = a + b·T) and marked "projected".
The last line is `peak_gb_16k: X`, the chunked loss's peak at 16,384 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, HIDDEN = 151936, 1024
GB = 1e9


def measure(arm: str, tokens: int, args) -> dict:
    """One forward + backward of one arm in this (fresh) process; the peak over the inputs, in bytes."""
    import psutil
    import torch

    from posttrain.config import LossConfig
    from posttrain.losses import LOSSES
    from posttrain.losses.chunked import chunked_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    hidden_TH = torch.randn(tokens, args.hidden, device=device, dtype=dtype, requires_grad=True)
    targets_T = torch.randint(0, args.vocab, (tokens,), device=device)
    cfg, loss = LossConfig(topk=20), LOSSES[args.loss]
    inputs = {"sampler_logprobs": -torch.rand(tokens, device=device), "teacher_logprobs": -torch.rand(tokens, device=device),
              "teacher_topk_ids": torch.randint(0, args.vocab, (tokens, 20), device=device),
              "teacher_topk_logprobs": torch.log_softmax(torch.randn(tokens, 20, device=device), -1)}
    inputs = {name: inputs[name] for name in loss.inputs}
    mask_T = torch.ones(tokens, dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = psutil.Process().memory_info().rss
        high_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if arm == "before":
        logits_NV = head(hidden_TH)[mask_T]
        out = loss.fn(logits_NV, targets_T[mask_T], cfg, **inputs)
        value = (out[0] if isinstance(out, tuple) else out).sum()
    else:  # "after": the chunked loss; "in_place": and the head's gradient written into .grad (HeadInPlace)
        value = chunked_loss(hidden_TH[mask_T], head, targets_T[mask_T], loss, cfg, inputs, args.chunk,
                             grad_in_place=arm == "in_place").loss
    value.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - base
        return {"arm": arm, "tokens": tokens, "peak_bytes": peak, "loss": float(value.detach())}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    # The high-water mark before the loss must be the inputs' resident set, or the peak would hide under it.
    return {"arm": arm, "tokens": tokens, "peak_bytes": peak, "loss": float(value.detach()),
            "high_water_before_over_rss": high_before - base}


def run_fresh(arm: str, tokens: int, args) -> dict:
    cmd = [sys.executable, __file__, "--measure", arm, "--tokens", str(tokens), "--chunk", str(args.chunk),
           "--loss", args.loss, "--dtype", args.dtype, "--device", args.device, "--threads", str(args.threads),
           "--vocab", str(args.vocab), "--hidden", str(args.hidden)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def linear_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares a + b·T through the measured (T, peak) points."""
    slope, intercept = statistics.linear_regression([t for t, _ in points], [p for _, p in points])
    return intercept, slope


def before_row_bytes(tokens: int, args) -> float:
    """A rough upper bound of the whole-row loss's peak, to decide whether it may run here: ~4 fp32 T x V."""
    return 4 * tokens * args.vocab * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=[2048, 8192, 16384])
    parser.add_argument("--chunk", type=int, default=512, help="trainer.loss_chunk_tokens (the card configs: 512)")
    parser.add_argument("--loss", default="nll", help="a posttrain.losses.LOSSES name")
    parser.add_argument("--dtype", default="float32",
                        help="float32 on a CPU (bf16 matmuls are emulated on CPUs without AVX512-BF16/AMX); bfloat16 on CUDA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--fit-tokens", type=int, nargs="*", default=[1024, 2048],
                        help="extra row lengths the whole-row arm is measured at, for its linear fit")
    parser.add_argument("--before-limit-gb", type=float, default=6.0,
                        help="the whole-row arm runs only where its estimate is below this (a shared 24 GB machine)")
    parser.add_argument("--measure", choices=["before", "after"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.tokens[0], args)))
        return

    from benchmarks.common import machine

    print(f"{machine()}; V = {args.vocab:,}, H = {args.hidden}, loss {args.loss}, {args.dtype}, chunk {args.chunk}, "
          "every position a target; peak over the inputs (the head weight's gradient included)", flush=True)
    before = {}
    for tokens in sorted(set(args.fit_tokens) | set(args.tokens)):
        if before_row_bytes(tokens, args) <= args.before_limit_gb * GB:
            before[tokens] = run_fresh("before", tokens, args)["peak_bytes"]
            print(f"  measured before at {tokens}: {before[tokens] / GB:.2f} GB", flush=True)
    a, b = linear_fit(sorted(before.items())) if len(before) >= 2 else (float("nan"), float("nan"))
    print(f"\n| tokens | before: whole-row logits (GB) | after: chunked, {args.chunk} per chunk (GB) | after / before |")
    print("|---|---|---|---|")
    after = {}
    for tokens in args.tokens:
        after[tokens] = run_fresh("after", tokens, args)["peak_bytes"]
        measured = tokens in before
        old = before[tokens] if measured else a + b * tokens
        label = f"{old / GB:.2f}" if measured else f"{old / GB:.2f} (projected)"
        print(f"| {tokens:,} | {label} | {after[tokens] / GB:.2f} | {after[tokens] / old:.2f} |", flush=True)
    if len(before) < len(set(args.tokens) | set(before)):
        print(f"projected: from the linear fit peak = {a / GB:.3f} GB + {b * 1e3 / GB:.3f} GB per 1,000 tokens through "
              f"the whole-row arm measured at {', '.join(f'{t:,}' for t in sorted(before))} tokens "
              f"(larger rows would not fit this machine beside other work: > {args.before_limit_gb:g} GB estimated)")
    bytes_per_logit = max(after.values()) / (args.chunk * args.vocab)
    print(f"chunked working set: {bytes_per_logit:.1f} bytes per logit of one chunk (peak / (chunk x V), head gradient included)")
    if 16384 in after:
        print(f"peak_gb_16k: {after[16384] / GB:.2f}")


if __name__ == "__main__":
    main()
