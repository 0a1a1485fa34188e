"""OPD throughput: `posttrain opd` (hf backends) against TRL's DistillationTrainer, on the same work.

    python benchmarks/opd_vs_trl.py [--runs 3] [--steps 6]

Both distil the tiny base student (`qwen3_moe`) from the tiny `qwen3_moe` teacher held locally, on
the same prompts of the shipped OPD mixture in the same order, with 2 completions per prompt sampled
at temperature 1 (top-p 1, no top-k), the same maximum completion length, float32, AdamW at the same
constant learning rate, and the same number of optimizer steps over the same prompts per step.
TRL's DistillationTrainer samples one completion per dataset row, so every prompt appears twice in
its dataset, next to each other; beta = 1 makes its loss the reverse KL. TRL gets its fastest CPU
settings (no gradient checkpointing, no bf16 on a CPU). posttrain runs as `posttrain opd` does: Ray
rollout, teacher and trainer groups (DeepSpeed ZeRO-2) with bucketed weight sync after every step,
in two arms: on-policy (the groups take turns, each with both cores) and one step off-policy
(`rollout.async_steps=1`: the next step is sampled and scored while this one trains; the rollout
or teacher and the trainer then run at once, so each worker gets one core's thread).

Throughput is steady-state prompts per second over steps 2..N (the first step's warm-up left out
for both); runs alternate and the medians are compared. Prints `ratio: X` (posttrain one step
off-policy over TRL) and `ratio_on_policy: X` (posttrain on-policy over TRL).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BENCH_DIR, ROOT, machine, median, tiny_suite  # noqa: E402

LR = 1e-5


# One step off-policy on a 2-core machine: the rollout (then the teacher) runs beside the trainer, so
# each worker gets one thread (two each oversubscribe the cores: measured 0.6x slower than on-policy).
ASYNC = ["rollout.async_steps=1", "rollout.threads_per_worker=1", "trainer.threads_per_worker=1",
         "teacher.threads_per_worker=1"]


def opd_overrides(student: Path, teacher: Path, steps: int, prompts: int, max_new: int, out: Path) -> list[str]:
    return [
        f"model.path={student}", "model.build_tiny_if_missing=false", f"teachers=[{{path: {teacher}, steps: {steps}}}]",
        f"rollout.prompts_per_step={prompts}", "rollout.samples_per_prompt=2", f"rollout.max_new_tokens={max_new}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", f"optim.lr={LR}", "optim.schedule=constant", "eval.every=0",
        f"checkpoint.every={steps}", "logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={out}",
    ]


def prompt_messages(cfg, count: int) -> list[list[dict]]:
    """The first `count` prompts posttrain's OPD draws, as chat messages (what TRL templates itself)."""
    from posttrain.data.prompts import OPDPrompts
    from posttrain.stages.sft import load_tokenizer

    prompts = OPDPrompts(cfg.data, load_tokenizer(cfg.model), seed=cfg.trainer.seed)
    rows = prompts.dataset.select(prompts.cursor.indices(0, count))
    return [m[:-1] if m[-1]["role"] == "assistant" else m for m in rows["messages"]]


def run_posttrain(cfg) -> dict:
    from posttrain.stages.opd.loop import run_opd

    run_opd(cfg, overwrite=True)
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = records[1:]
    per_step = cfg.rollout.prompts_per_step
    split = {k: median([r[k] for r in timed]) for k in ("rollout_s", "teacher_s", "wait_s", "train_s", "sync_s", "step_s")}
    return {"prompts_per_s": per_step * len(timed) / sum(r["step_s"] for r in timed),
            "response_len": median([r["response_len"] for r in records]), "split": split}


def run_trl(student: Path, teacher: Path, messages: list, steps: int, prompts: int, max_new: int, out: Path,
            threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    torch.set_num_threads(threads)
    # One completion per row: each prompt twice, side by side, gives 2 completions per prompt per step.
    dataset = Dataset.from_dict({"prompt": [m for m in messages for _ in range(2)]})
    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.padding_side = "left"
    args = DistillationConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=2 * prompts, gradient_accumulation_steps=1,
        max_completion_length=max_new, temperature=1.0, top_p=1.0, top_k=0, beta=1.0, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, shuffle_dataset=False, seed=0,
        model_init_kwargs={"dtype": torch.float32},
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.step_s, self._start = [], 0.0

        def on_step_begin(self, *a, **k):
            self._start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.step_s.append(time.perf_counter() - self._start)

    clock = Clock()
    trainer = DistillationTrainer(model=str(student), teacher_model=AutoModelForCausalLM.from_pretrained(
        teacher, dtype=torch.float32), args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would bury the table
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"prompts_per_s": prompts * len(clock.step_s[1:]) / sum(clock.step_s[1:]),
            "response_len": median(lengths) if lengths else float("nan")}


def runs_text(runs: list[dict]) -> str:
    return ", ".join(f"{r['prompts_per_s']:.2f}" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (2 completions each)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the TRL process")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "opd_vs_trl.json")
    args = parser.parse_args()

    import ray

    from posttrain.infra.cluster import init_ray
    from posttrain.config import OPDConfig, RayConfig, load_config

    started = time.perf_counter()
    models = tiny_suite()
    student, teacher = models["student"], models["teacher-moe"]
    out = BENCH_DIR / "opd_vs_trl"
    cfg = load_config(OPDConfig, ROOT / "configs/tiny/opd.yaml", opd_overrides(
        student, teacher, args.steps, args.prompts, args.max_new_tokens, out / "posttrain"))
    cfg_async = load_config(OPDConfig, ROOT / "configs/tiny/opd.yaml", opd_overrides(
        student, teacher, args.steps, args.prompts, args.max_new_tokens, out / "posttrain-async") + ASYNC)
    messages = prompt_messages(cfg, args.steps * args.prompts)
    print(f"student {student} <- teacher {teacher}; {args.steps} steps x {args.prompts} prompts x 2 completions, "
          f"at most {args.max_new_tokens} new tokens; {machine()}", flush=True)
    init_ray(RayConfig())
    posttrain_runs, async_runs, trl_runs = [], [], []
    for run in range(args.runs):
        for name, runs, config in (("posttrain on-policy", posttrain_runs, cfg), ("posttrain async 1", async_runs, cfg_async)):
            runs.append(run_posttrain(config))
            print(f"run {run + 1} {name}: {runs[-1]['prompts_per_s']:.2f} prompts/s "
                  f"(response length {runs[-1]['response_len']:.1f}; median step split "
                  + ", ".join(f"{k} {v:.3f}" for k, v in runs[-1]["split"].items()) + ")", flush=True)
        trl_runs.append(run_trl(student, teacher, messages, args.steps, args.prompts, args.max_new_tokens,
                                out / "trl", args.threads))
        print(f"run {run + 1} TRL: {trl_runs[-1]['prompts_per_s']:.2f} prompts/s "
              f"(response length {trl_runs[-1]['response_len']:.1f})", flush=True)
    ray.shutdown()

    ours = median([r["prompts_per_s"] for r in posttrain_runs])
    ahead = median([r["prompts_per_s"] for r in async_runs])
    theirs = median([r["prompts_per_s"] for r in trl_runs])
    result = {"posttrain_prompts_per_s": ours, "posttrain_async_prompts_per_s": ahead, "trl_prompts_per_s": theirs,
              "ratio": ahead / theirs, "ratio_on_policy": ours / theirs,
              "posttrain_runs": posttrain_runs, "posttrain_async_runs": async_runs, "trl_runs": trl_runs, "machine": machine(),
              "args": {k: str(v) for k, v in vars(args).items()}, "wall_s": time.perf_counter() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\n| | prompts/s (median of {args.runs}) | runs | mean response length |\n|---|---|---|---|")
    print(f"| posttrain opd, on-policy (hf rollout + hf teacher + DeepSpeed trainer on Ray) | {ours:.2f} | "
          f"{runs_text(posttrain_runs)} | {median([r['response_len'] for r in posttrain_runs]):.1f} |")
    print(f"| posttrain opd, one step off-policy (rollout.async_steps 1) | {ahead:.2f} | "
          f"{runs_text(async_runs)} | {median([r['response_len'] for r in async_runs]):.1f} |")
    print(f"| TRL DistillationTrainer (beta 1, local teacher) | {theirs:.2f} | "
          f"{runs_text(trl_runs)} | "
          f"{median([r['response_len'] for r in trl_runs]):.1f} |")
    print(f"\nwall time {result['wall_s']:.0f} s")
    print(f"ratio_on_policy: {ours / theirs:.2f}")
    print(f"ratio: {ahead / theirs:.2f}")


if __name__ == "__main__":
    main()
