"""The stages' command-line arguments (`posttrain sft|opd ...`), and the config they resolve to.

Shared by the CLI and by `posttrain submit`, which parses a stage's arguments exactly as the job on
the cluster will, before anything is uploaded.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from posttrain.config import ConfigError, OPDConfig, SFTConfig, TeacherStage, load_config
from posttrain.infra.paths import resolve_path
from posttrain.stages.driver import holds_run

STAGE_CONFIGS = {"sft": SFTConfig, "opd": OPDConfig}


def add_stage_args(p: argparse.ArgumentParser, stage: str) -> None:
    example = {"sft": "configs/tiny/sft.yaml, configs/marco_mini/sft.yaml", "opd": "configs/tiny/opd.yaml, configs/marco_mini/opd.yaml"}
    p.add_argument("--config", required=True, help=f"YAML config ({example[stage]}, ...)")
    p.add_argument("--output-dir", help="where metrics, checkpoints and the final export go (config: output_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a run already in --output-dir and start afresh")
    p.add_argument("--accept-change", action="append", default=[], metavar="KEY",
                   help="with --resume: take a change to KEY (a config key or section) that resuming refuses by "
                        "default; recorded in config_changes.jsonl")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one (also RAY_ADDRESS)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.num_workers=2")
    if stage == "opd":
        p.add_argument("--student", help="student model (default: the config's model.path, the SFT stage's final/)")
        p.add_argument("--teacher", action="append", default=[], metavar="PATH_OR_ID[:STEPS]",
                       help="a cascade stage; repeat for several, in order. Replaces the config's cascade")
        p.add_argument("--no-check", action="store_true",
                       help="opd: skip the first step's sampler-vs-trainer and static checks (logged as check/... with step 1)")
        p.add_argument("--no-backend-compare", action="store_true",
                       help="check: do not start the other teacher backend to compare with the configured one")


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse `argv`, letting `key=value` overrides stand anywhere on the line; returns the arguments
    and what is neither an option nor an override (for the caller to refuse)."""
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if extra and not unknown:
        if hasattr(args, "overrides"):
            args.overrides = list(args.overrides) + extra
        else:
            unknown = extra
    return args, unknown


def stage_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"posttrain {stage}")
    add_stage_args(parser, stage)
    return parser


def parse_teachers(flags: list[str], configured: list[TeacherStage]) -> list[TeacherStage]:
    """`PATH_OR_ID[:STEPS]` flags → cascade stages; a stage without STEPS keeps the configured count."""
    stages = []
    for i, flag in enumerate(flags):
        head, colon, tail = flag.rpartition(":")
        if colon and tail.lstrip("-").isdigit() and int(tail) <= 0:
            raise ConfigError(f"--teacher {flag}: the step count must be > 0, got {int(tail)}")
        if colon and not tail.isdigit() and not Path(flag).exists():  # not a step count, and no path of that name
            raise ConfigError(f"--teacher {flag}: the step count {tail!r} is not a whole number; give PATH_OR_ID or "
                              "PATH_OR_ID:STEPS, e.g. --teacher models/tiny/teacher-moe:30")
        path, steps = (head, tail) if colon and tail.isdigit() else (flag, "")
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


def stage_config(stage: str, args: argparse.Namespace, pick_free_dir: bool = True):
    """The stage's typed config from `--config`, the overrides and the options.

    With `pick_free_dir` (a run on this machine; `posttrain submit` checks a command for another), a
    config's default output directory that holds an earlier run is never touched: the next free
    sibling (runs/opd-1, runs/opd-2, ...) is taken, and OPD's default student follows the same rule
    (`newest_export`). A directory named on the command line is refused instead (by the stage),
    unless --resume or --overwrite says what to do.
    """
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(STAGE_CONFIGS[stage], resolve_path(args.config), overrides)
    if stage == "opd":
        if args.student:
            cfg.model.path = args.student
        if args.teacher:
            cfg.teachers = parse_teachers(args.teacher, cfg.teachers)
        if pick_free_dir and not args.student and not any(o.startswith("model.path=") for o in overrides):
            cfg.model.path = newest_export(cfg.model.path)
    explicit = args.output_dir or any(o.startswith("output_dir=") for o in overrides)
    if pick_free_dir and not explicit and not (args.resume or args.overwrite) and holds_run(Path(cfg.output_dir)):
        free = next(d for d in sibling_dirs(Path(cfg.output_dir)) if not holds_run(d))
        print(f"[posttrain] {cfg.output_dir} holds an earlier run; writing to {free} "
              "(--output-dir DIR to choose, --resume / --overwrite to reuse it)", flush=True)
        cfg.output_dir = str(free)
    return cfg


def sibling_dirs(out: Path):
    """`out`, out-1, out-2, ...: where a stage writes when its config's default directory is taken."""
    yield out
    n = 1
    while True:
        yield Path(f"{out}-{n}")
        n += 1


def newest_export(student: str) -> str:
    """The config's default student `<dir>/final` follows where the SFT stage actually wrote: the
    newest `final/` among <dir>, <dir>-1, <dir>-2, ... (SFT moves to the next free one when <dir> is taken)."""
    path = Path(student)
    if path.name != "final":
        return student
    exports = []
    for run in sibling_dirs(path.parent):
        if run != path.parent and not run.exists():
            break
        if (run / "final").is_dir():
            exports.append(run / "final")
    if not exports:
        return student
    newest = max(exports, key=lambda p: p.stat().st_mtime)
    if newest != path:
        print(f"[posttrain] student: {newest}, the newest SFT export beside {path} (--student PATH to choose)", flush=True)
    return str(newest)


def resume_command(stage: str, args: argparse.Namespace, output_dir: str | Path) -> str:
    """The command line that continues this run: the same config, options and overrides, the run's directory, --resume."""
    argv = ["posttrain", stage, "--config", args.config, "--output-dir", str(output_dir)]
    if stage == "opd":
        argv += ["--student", args.student] if args.student else []
        argv += [x for flag in args.teacher for x in ("--teacher", flag)]
    argv += ["--ray-address", args.ray_address] if args.ray_address else []
    argv += [o for o in args.overrides if not o.startswith("output_dir=")]
    return shlex.join([*argv, "--resume"])
