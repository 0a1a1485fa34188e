"""The stages' command-line arguments (`posttrain sft|opd ...`), and the config they resolve to.

Shared by the CLI and by `posttrain submit`, which parses a stage's arguments exactly as the job on
the cluster will, before anything is uploaded.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one (also RAY_ADDRESS)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.num_workers=2")
    if stage == "opd":
        p.add_argument("--student", help="student model (default: the config's model.path, the SFT stage's final/)")
        p.add_argument("--teacher", action="append", default=[], metavar="PATH_OR_ID[:STEPS]",
                       help="a cascade stage; repeat for several, in order. Replaces the config's cascade")


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


def stage_config(stage: str, args: argparse.Namespace, pick_free_dir: bool = True):
    """The stage's typed config from `--config`, the overrides and the options.

    With `pick_free_dir`, a config's default output directory that holds an earlier run is never
    touched: the next free sibling (runs/opd-1, runs/opd-2, ...) is taken. A directory named on the
    command line is refused instead (by the stage), unless --resume or --overwrite says what to do.
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
    explicit = args.output_dir or any(o.startswith("output_dir=") for o in overrides)
    if pick_free_dir and not explicit and not (args.resume or args.overwrite) and holds_run(Path(cfg.output_dir)):
        n = 1
        while holds_run(Path(f"{cfg.output_dir}-{n}")):
            n += 1
        print(f"[posttrain] {cfg.output_dir} holds an earlier run; writing to {cfg.output_dir}-{n} "
              "(--output-dir DIR to choose, --resume / --overwrite to reuse it)", flush=True)
        cfg.output_dir = f"{cfg.output_dir}-{n}"
    return cfg
