"""How a training step's time grows with sequence length and batch size, and the SFT padding fraction.

    python benchmarks/step_scaling.py

One trainer worker (the class the Ray actors run, here in-process: DeepSpeed ZeRO-2 on gloo, 2
threads) on the benchmark-sized qwen3_moe (benchmarks/common.py), over packed synthetic examples
of exact lengths. Two sweeps: the sequence length at a fixed 4,096 tokens per step, and the number of
sequences at a fixed length of 512. A padding-free step should cost time linear in its tokens (plus the
attention term, which grows with the sequence length); `vs linear` is the time per token relative to
the sweep's first row. Then the padding fraction of SFT micro-batches on the shipped mixture with 1
and 2 workers (the only padding is the one-token placeholder a worker gets when it has fewer
micro-batches than another).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BENCH_DIR, ROOT, bench_model, machine  # noqa: E402


def synthetic(length: int, count: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(10, vocab, (length,), generator=g).tolist(), [0] * (length // 4) + [1] * (length - length // 4))
            for _ in range(count)]


def time_steps(worker, length: int, count: int, vocab: int, repeats: int) -> float:
    from posttrain.data.packing import pack
    from posttrain.losses import LOSSES

    times = []
    for r in range(repeats + 1):  # the first is a warm-up
        batches = pack(synthetic(length, count, vocab, seed=r), max(4096, length * count))
        started = time.perf_counter()
        worker.train_step(batches, LOSSES["nll"], sum(b.num_loss_tokens for b in batches))
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def sft_padding(workers: int, steps: int = 30) -> float:
    from transformers import AutoTokenizer

    from posttrain.config import SFTConfig, load_config
    from posttrain.data.packing import distribute
    from posttrain.data.sft import SFTData

    cfg = load_config(SFTConfig, ROOT / "configs/tiny/sft.yaml")
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models/tiny/student")
    data = SFTData(cfg.data, tokenizer, seed=0)
    pad = total = 0
    for step in range(steps):
        for shard in distribute(data.batch(step * cfg.trainer.global_batch_size, cfg.trainer.global_batch_size),
                                workers, tokenizer.pad_token_id):
            for batch in shard:
                total += batch.input_ids.numel()
                pad += batch.input_ids.numel() - batch.num_tokens
    return pad / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "step_scaling.json")
    args = parser.parse_args()

    from transformers import AutoConfig

    from posttrain.config import DeepSpeedConfig, ModelConfig, OptimConfig, TrainerConfig
    from posttrain.train.worker import TrainerWorker, free_port

    path = bench_model()
    vocab = AutoConfig.from_pretrained(path).vocab_size
    worker = TrainerWorker(0, 1, num_threads=2)
    worker.setup(("127.0.0.1", free_port()), ModelConfig(path=str(path)), TrainerConfig(router_aux_loss_coef=0.001),
                 OptimConfig(lr=1e-5, schedule="constant"), DeepSpeedConfig(zero_stage=2), total_steps=1000)
    print(f"{machine()}; one trainer worker, 2 threads", flush=True)

    sweeps = {"sequence length (4,096 tokens per step)": [(length, 4096 // length) for length in (256, 512, 1024, 2048, 4096)],
              "sequences of 512 tokens per step": [(512, count) for count in (2, 4, 8, 16)]}
    results = {}
    for title, grid in sweeps.items():
        print(f"\n| {title} | tokens | step ms | tokens/s | time per token vs first row |\n|---|---|---|---|---|")
        rows, base = [], None
        for length, count in grid:
            seconds = time_steps(worker, length, count, vocab, args.repeats)
            per_token = seconds / (length * count)
            base = base or per_token
            rows.append({"length": length, "count": count, "step_s": seconds, "tokens_per_s": length * count / seconds,
                         "vs_linear": per_token / base})
            label = length if title.startswith("sequence length") else count
            print(f"| {label} | {length * count} | {seconds * 1e3:,.0f} | {length * count / seconds:,.0f} | "
                  f"{per_token / base:.2f} |", flush=True)
        results[title] = rows
    worker.shutdown()

    padding = {workers: sft_padding(workers) for workers in (1, 2)}
    print("\n| SFT micro-batches (tiny config, 30 steps) | pad fraction |\n|---|---|")
    for workers, frac in padding.items():
        print(f"| {workers} worker(s) | {frac:.4%} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "sweeps": results, "sft_padding": padding}, indent=2))


if __name__ == "__main__":
    main()
