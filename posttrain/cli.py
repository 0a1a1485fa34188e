"""`posttrain` command line: tiny | sft | opd | demo | eval | report | submit | plan."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from posttrain.paths import resolve_path

TINY_SFT = "configs/tiny/sft.yaml"
TINY_OPD = "configs/tiny/opd.yaml"


def _common_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (configs/tiny/sft.yaml, configs/marco_mini/sft.yaml, ...)")
    p.add_argument("--output-dir", help="where metrics, checkpoints and the final export go (config: output_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a run already in --output-dir and start afresh")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one (also RAY_ADDRESS)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.num_workers=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny", help="build the offline tiny tokenizer, student and teachers")
    p.add_argument("--output-dir", default="models/tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the models exist")

    p = sub.add_parser("sft", help="supervised fine-tuning with DeepSpeed ZeRO on Ray")
    _common_stage_args(p)

    p = sub.add_parser("opd", help="cascaded on-policy distillation: rollout, teacher scoring, reverse-KL training")
    _common_stage_args(p)
    p.add_argument("--student", help="student model (default: the config's model.path, the SFT stage's final/)")
    p.add_argument("--teacher", action="append", default=[], metavar="PATH_OR_ID[:STEPS]",
                   help="a cascade stage; repeat for several, in order. Replaces the config's cascade")

    p = sub.add_parser("demo", help="the whole pipeline on the tiny offline models (a few minutes on a CPU)")
    p.add_argument("--output-dir", default="runs/demo")

    p = sub.add_parser("eval", help="task accuracy, reverse KL to a teacher and response length of a model")
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--tasks", default="addition,repeat", help="comma-separated tasks (posttrain.eval.tasks)")
    p.add_argument("--teacher", help="also report the mean per-token reverse KL to this teacher on the model's samples")
    p.add_argument("--limit", type=int, default=64, help="eval-split examples per task")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the results as JSON here")

    p = sub.add_parser("report", help="PNG plots and report.md from a run's metrics.jsonl")
    p.add_argument("run_dir")

    from posttrain.submit import default_address

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
    p.add_argument("stage", choices=["sft", "opd"])
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's own arguments, as for `posttrain sft|opd`")

    p = sub.add_parser("plan", help="memory per GPU, fit, and step/total time of a config at a GPU count")
    p.add_argument("--config", required=True)
    p.add_argument("--gpus", type=int, help="GPUs in the allocation (default: the config's ray.num_gpus_total)")
    p.add_argument("--gpu", default="h100", help="GPU kind: h100, h200, a100-80g, a100-40g, l40s (posttrain.plan.GPUS)")
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


def _load_stage_config(cls, args):
    from posttrain.config import load_config

    from posttrain.sft import holds_run

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(cls, resolve_path(args.config), overrides)
    explicit = args.output_dir or any(o.startswith("output_dir=") for o in overrides)
    if not explicit and not (args.resume or args.overwrite) and holds_run(Path(cfg.output_dir)):
        # The config's default directory holds an earlier run: never touch it, take the next free
        # sibling (runs/opd-1, runs/opd-2, ...). A directory named on the command line is refused instead.
        n = 1
        while holds_run(Path(f"{cfg.output_dir}-{n}")):
            n += 1
        print(f"[posttrain] {cfg.output_dir} holds an earlier run; writing to {cfg.output_dir}-{n} "
              "(--output-dir DIR to choose, --resume / --overwrite to reuse it)", flush=True)
        cfg.output_dir = f"{cfg.output_dir}-{n}"
    return cfg


def cmd_tiny(args) -> None:
    from posttrain.models.tiny import build_tiny_suite

    paths = build_tiny_suite(args.output_dir, seed=args.seed, force=args.force)
    for name, path in paths.items():
        print(f"{name:13s} {path}")


def cmd_sft(args) -> None:
    from posttrain.config import SFTConfig
    from posttrain.sft import run_sft

    cfg = _load_stage_config(SFTConfig, args)
    run_sft(cfg, resume=args.resume, overwrite=args.overwrite, ray_address=args.ray_address)


def parse_teachers(flags: list[str], configured: list) -> list:
    """`PATH_OR_ID[:STEPS]` flags → cascade stages; a stage without STEPS keeps the configured count."""
    from posttrain.config import ConfigError, TeacherStage

    stages = []
    for i, flag in enumerate(flags):
        path, _, steps = flag.rpartition(":") if flag.rpartition(":")[2].isdigit() else (flag, "", "")
        if steps:
            count = int(steps)
        elif configured:
            count = configured[min(i, len(configured) - 1)].steps
        else:
            raise ConfigError(f"--teacher {flag}: give the step count as PATH:STEPS")
        if count <= 0:
            raise ConfigError(f"--teacher {flag}: the step count must be > 0")
        stages.append(TeacherStage(path=path, steps=count))
    return stages


def cmd_opd(args) -> None:
    from posttrain.config import OPDConfig
    from posttrain.opd.loop import run_opd

    cfg = _load_stage_config(OPDConfig, args)
    if args.student:
        cfg.model.path = args.student
    if args.teacher:
        cfg.teachers = parse_teachers(args.teacher, cfg.teachers)
    run_opd(cfg, resume=args.resume, overwrite=args.overwrite, ray_address=args.ray_address)


def cmd_eval(args) -> None:
    from posttrain.config import ConfigError
    from posttrain.eval.run import evaluate, format_table, write_json
    from posttrain.eval.tasks import TASKS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for task in tasks:
        if task not in TASKS:
            raise ConfigError(f"--tasks: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    for path in filter(None, (args.model, args.teacher)):
        if not Path(path).exists() and (path.startswith((".", "/")) or path.count("/") != 1):
            raise FileNotFoundError(f"{path} does not exist (expected a model directory or a hub id org/name)")
    result = evaluate(args.model, tasks, limit=args.limit, teacher=args.teacher, max_new_tokens=args.max_new_tokens,
                      seed=args.seed)
    print(format_table(result))
    if args.output:
        write_json(result, args.output)
        print(f"results: {args.output}")


def cmd_report(args) -> None:
    from posttrain.report import write_report

    path = write_report(Path(args.run_dir))
    print(f"report: {path}")


def cmd_submit(args) -> int:
    from posttrain.config import ConfigError
    from posttrain.submit import parse_env, submit

    if not args.address:
        raise ConfigError("submit: give the cluster's job server with --address http://HOST:8265 (or RAY_API_SERVER_ADDRESS)")
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    return submit(args.address, args.stage, stage_args, working_dir=args.working_dir, env=parse_env(args.env),
                  pip=args.pip, wait=not args.no_wait)


def cmd_plan(args) -> None:
    from posttrain.plan import plan_command

    levers = {"zero_stage": args.zero_stage, "activation_checkpointing": args.activation_checkpointing,
              "offload_optimizer": args.offload_optimizer, "offload_params": args.offload_params,
              "lora_rank": args.lora_rank, "colocated": args.colocate}
    plan_command(args.config, args.gpus, args.gpu, args.overrides, gpu_memory_gb=args.gpu_memory_gb, json_path=args.json,
                 levers={k: v for k, v in levers.items() if v is not None})


def cmd_demo(args) -> None:
    from posttrain.config import OPDConfig, SFTConfig, load_config
    from posttrain.opd.loop import run_opd
    from posttrain.sft import run_sft

    out = Path(args.output_dir)
    rows = []
    started = time.perf_counter()
    sft_cfg = load_config(SFTConfig, resolve_path(TINY_SFT), [f"output_dir={out / 'sft'}"])
    final = run_sft(sft_cfg, overwrite=True)
    rows += _stage_rows("sft", out / "sft", final, time.perf_counter() - started, "loss")

    started = time.perf_counter()
    opd_cfg = load_config(OPDConfig, resolve_path(TINY_OPD), [f"output_dir={out / 'opd'}", f"model.path={final}"])
    opd_final = run_opd(opd_cfg, overwrite=True)
    rows += _stage_rows("opd", out / "opd", opd_final, time.perf_counter() - started, "reverse_kl")
    _print_summary(rows)
    print(f"\noutputs: {out.resolve()} (metrics.jsonl, tensorboard/, checkpoints/ and final/ per stage)")


def _stage_rows(stage: str, run_dir: Path, final: Path, wall_s: float, key: str) -> list[dict]:
    """One summary row per stage (per cascade stage for OPD): mean of the first and last 5 steps."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{stage} {r['stage']}: {Path(r['teacher']).name}" if "teacher" in r else stage, []).append(r)
    rows = []
    for name, group in groups.items():
        values = [r[key] for r in group]
        head, tail = values[:5], values[-5:]
        # A cascade stage's time is the sum of its step times; a single stage gets its whole wall time.
        stage_s = wall_s if len(groups) == 1 else sum(r["step_s"] for r in group)
        rows.append({"stage": name, "steps": len(group), "metric": key, "first": sum(head) / len(head),
                     "last": sum(tail) / len(tail), "wall_s": stage_s, "output": ""})
    rows[-1]["output"] = str(final)
    return rows


def _print_summary(rows: list[dict]) -> None:
    width = max(len(r["stage"]) for r in rows)
    print(f"\n {'stage':{width}s} | steps | metric     | first 5 | last 5 | wall (s) | output")
    print(f"-{'-' * width}-+-------+------------+---------+--------+----------+---------------------")
    for r in rows:
        print(f" {r['stage']:{width}s} | {r['steps']:5d} | {r['metric']:10s} | {r['first']:7.3f} | {r['last']:6.3f} | "
              f"{r['wall_s']:8.1f} | {r['output']}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand anywhere on the line, before or after the options.
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from posttrain.metrics import quiet_library_progress

    quiet_library_progress()
    from posttrain.config import ConfigError
    from posttrain.data.mixture import DataError
    from posttrain.cluster import PlacementError
    from posttrain.opd.checks import VocabularyMismatch
    from posttrain.sft import NonFiniteError, RunDirError
    from posttrain.checkpoint import CheckpointWriteError
    from posttrain.cluster import WorkerFailure
    from posttrain.submit import SubmitError

    try:
        status = {"tiny": cmd_tiny, "sft": cmd_sft, "opd": cmd_opd, "demo": cmd_demo, "eval": cmd_eval,
                  "report": cmd_report, "submit": cmd_submit, "plan": cmd_plan}[args.command](args)
    except (ConfigError, DataError, RunDirError, VocabularyMismatch, PlacementError, SubmitError,
            FileNotFoundError) as e:
        print(f"posttrain {args.command}: error: {e}", file=sys.stderr)
        return 2  # bad input, refused before the work
    except (WorkerFailure, NonFiniteError, CheckpointWriteError) as e:
        print(f"posttrain {args.command}: stopped: {e}", file=sys.stderr)
        return 1  # a fault during the run; the message says how to resume
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
