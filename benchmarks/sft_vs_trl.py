"""SFT throughput: `posttrain sft` against TRL's SFTTrainer, same model, data, budget, precision, optimizer.

    python benchmarks/sft_vs_trl.py [--runs 3] [--steps 8]

Both train the benchmark-sized qwen3_moe (hidden 256, 8 layers, 32 experts top-4; benchmarks/common.py)
in float32 with AdamW (lr 1e-4 constant, betas 0.9/0.95, no weight decay, clip 1.0) and the router
load-balancing loss on, over the same tokenised examples of the shipped SFT mixture (chat template,
assistant-only labels), packed into 2,048-token rows. TRL gets its fastest CPU settings: packing with
best-fit decreasing and padding-free batches (its collator flattens a batch into one row with
restarting position ids, as posttrain's packer does), one row per micro-batch, and as many
accumulation steps as posttrain's micro-batches per step, so both take optimizer steps over the same
number of tokens. posttrain runs as `posttrain sft` does: a Ray actor with a DeepSpeed engine, at ZeRO
stage 0 by default (one worker has nothing to partition, and ZeRO's flat-buffer copies cost ~7% here);
a ZeRO-2 run is measured beside it.

Throughput is steady-state: tokens (real, non-pad) over the wall time of steps 2..N, the first step
(allocator and kernel warm-up) left out for both. Runs alternate between the two; the medians are
compared. Prints `ratio: X` (posttrain over TRL; higher is better).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BENCH_DIR, ROOT, bench_model, fmt_runs, machine, median, param_counts  # noqa: E402

LR, PACK_TOKENS, MAX_SEQ_LEN = 1e-4, 2048, 256


def sft_examples(model_path: Path, count: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """The first `count` examples posttrain's SFT would draw: (input_ids, loss_mask)."""
    from transformers import AutoTokenizer

    from posttrain.config import DataConfig
    from posttrain.data.sft import SFTData

    data = SFTData(DataConfig(mixture=str(ROOT / "data_mixtures/sft_tiny.yaml"), max_seq_len=MAX_SEQ_LEN,
                              pack_tokens=PACK_TOKENS), AutoTokenizer.from_pretrained(model_path), seed=seed)
    rows = data.dataset.select(data.cursor.indices(0, count))
    return list(zip(rows["input_ids"], rows["loss_mask"]))


def run_posttrain(model_path: Path, steps: int, batch: int, out: Path, workers: int, zero_stage: int) -> dict:
    from posttrain.config import SFTConfig, load_config
    from posttrain.stages.sft import run_sft

    cfg = load_config(SFTConfig, ROOT / "configs/tiny/sft.yaml", [
        f"model.path={model_path}", "model.build_tiny_if_missing=false", f"output_dir={out}",
        f"data.max_seq_len={MAX_SEQ_LEN}", f"data.pack_tokens={PACK_TOKENS}", f"trainer.global_batch_size={batch}",
        f"trainer.max_steps={steps}", f"trainer.num_workers={workers}", f"deepspeed.zero_stage={zero_stage}",
        f"optim.lr={LR}", "optim.schedule=constant",
        "optim.warmup_steps=0", f"checkpoint.every={steps}", "logging.progress_bar=false", f"logging.every={steps}",
        "logging.tensorboard=false"])
    run_sft(cfg, overwrite=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = records[1:]
    return {"tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_s"] for r in timed),
            "first_loss": records[0]["loss"], "micro_batches": records[0]["micro_batches_per_worker"],
            "tokens_per_step": sum(r["tokens"] for r in records) / len(records)}


def run_trl(model_path: Path, examples: list, steps: int, accumulation: int, out: Path, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    torch.set_num_threads(threads)
    dataset = Dataset.from_dict({"input_ids": [ids for ids, _ in examples],
                                 "assistant_masks": [mask for _, mask in examples]})
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.output_router_logits = True  # the load-balancing loss, as posttrain computes it
    args = TRLConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=1, gradient_accumulation_steps=accumulation,
        max_length=PACK_TOKENS, packing=True, packing_strategy="bfd", padding_free=True,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0,
        disable_tqdm=True, shuffle_dataset=False,
    )

    class Clock(TrainerCallback):
        """Wall time and real tokens of each optimizer step (tokens counted at the model's input)."""

        def __init__(self):
            self.step_s, self.step_tokens, self._tokens, self._start = [], [], 0, 0.0

        def on_step_begin(self, *a, **k):
            self._tokens, self._start = 0, time.perf_counter()

        def on_step_end(self, *a, **k):
            self.step_s.append(time.perf_counter() - self._start)
            self.step_tokens.append(self._tokens)

    clock = Clock()

    def count_tokens(module, args, kwargs):
        clock._tokens += int(kwargs["input_ids"].numel())

    model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[clock])
    trainer.train()
    first_loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return {"tokens_per_s": sum(clock.step_tokens[1:]) / sum(clock.step_s[1:]), "first_loss": first_loss,
            "tokens_per_step": sum(clock.step_tokens) / len(clock.step_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128, help="sequences per optimizer step")
    parser.add_argument("--workers", type=int, default=1, help="posttrain trainer workers")
    parser.add_argument("--zero-stage", type=int, default=0, choices=(0, 2, 3),
                        help="posttrain's DeepSpeed stage (0: nothing to partition on one worker); "
                             "a stage-2 run is measured beside it")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the TRL process")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "sft_vs_trl.json")
    args = parser.parse_args()

    import ray

    from posttrain.infra.cluster import init_ray
    from posttrain.config import RayConfig

    started = time.perf_counter()
    model_path = bench_model()
    counts = param_counts(model_path)
    examples = sft_examples(model_path, args.steps * args.batch)
    print(f"model: qwen3_moe {counts['total'] / 1e6:.1f}M params, {counts['active'] / 1e6:.1f}M active; "
          f"{args.steps} steps x {args.batch} sequences; {machine()}", flush=True)
    init_ray(RayConfig())
    posttrain_runs, zero2_runs, trl_runs = [], [], []
    for run in range(args.runs):
        posttrain_runs.append(run_posttrain(model_path, args.steps, args.batch, BENCH_DIR / "sft_vs_trl" / "posttrain",
                                            args.workers, args.zero_stage))
        print(f"run {run + 1} posttrain (ZeRO stage {args.zero_stage}): {posttrain_runs[-1]['tokens_per_s']:,.0f} tokens/s "
              f"(first loss {posttrain_runs[-1]['first_loss']:.4f})", flush=True)
        if args.zero_stage != 2:
            zero2_runs.append(run_posttrain(model_path, args.steps, args.batch, BENCH_DIR / "sft_vs_trl" / "posttrain-z2",
                                            args.workers, 2))
            print(f"run {run + 1} posttrain (ZeRO stage 2): {zero2_runs[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
        trl_runs.append(run_trl(model_path, examples, args.steps, posttrain_runs[-1]["micro_batches"],
                                BENCH_DIR / "sft_vs_trl" / "trl", args.threads))
        print(f"run {run + 1} TRL:       {trl_runs[-1]['tokens_per_s']:,.0f} tokens/s "
              f"(first loss {trl_runs[-1]['first_loss']:.4f})", flush=True)
    ray.shutdown()

    ours = median([r["tokens_per_s"] for r in posttrain_runs])
    theirs = median([r["tokens_per_s"] for r in trl_runs])
    result = {"posttrain_tokens_per_s": ours, "trl_tokens_per_s": theirs, "ratio": ours / theirs,
              "posttrain_runs": posttrain_runs, "posttrain_zero2_runs": zero2_runs, "trl_runs": trl_runs, "machine": machine(), "args": vars(args) | {
                  "json": str(args.json)}, "wall_s": time.perf_counter() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\n| | tokens/s (median of {args.runs}) | runs | tokens per step |\n|---|---|---|---|")
    print(f"| posttrain sft, DeepSpeed ZeRO stage {args.zero_stage} ({args.workers} worker) | {ours:,.0f} | "
          f"{fmt_runs([r['tokens_per_s'] for r in posttrain_runs])} | {posttrain_runs[0]['tokens_per_step']:,.0f} |")
    if zero2_runs:
        zero2 = median([r["tokens_per_s"] for r in zero2_runs])
        print(f"| posttrain sft, DeepSpeed ZeRO-2 ({args.workers} worker) | {zero2:,.0f} | "
              f"{fmt_runs([r['tokens_per_s'] for r in zero2_runs])} | {zero2_runs[0]['tokens_per_step']:,.0f} |")
    print(f"| TRL SFTTrainer (packing bfd, padding-free) | {theirs:,.0f} | "
          f"{fmt_runs([r['tokens_per_s'] for r in trl_runs])} | {trl_runs[0]['tokens_per_step']:,.0f} |")
    print(f"\nwall time {result['wall_s']:.0f} s")
    print(f"ratio: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
