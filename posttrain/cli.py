"""`posttrain` command line: tiny | sft | demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from posttrain.paths import resolve_path

TINY_SFT = "configs/tiny/sft.yaml"


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

    p = sub.add_parser("demo", help="the whole pipeline on the tiny offline models (a few minutes on a CPU)")
    p.add_argument("--output-dir", default="runs/demo")
    return parser


def _load_stage_config(cls, args):
    from posttrain.config import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(cls, resolve_path(args.config), overrides)


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


def cmd_demo(args) -> None:
    from posttrain.config import SFTConfig, load_config
    from posttrain.sft import run_sft

    out = Path(args.output_dir)
    rows = []
    started = time.perf_counter()
    sft_cfg = load_config(SFTConfig, resolve_path(TINY_SFT), [f"output_dir={out / 'sft'}"])
    final = run_sft(sft_cfg, overwrite=True)
    rows.append(_stage_row("sft", out / "sft", final, time.perf_counter() - started, "loss"))
    _print_summary(rows)


def _stage_row(stage: str, run_dir: Path, final: Path, wall_s: float, key: str) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"stage": stage, "steps": len(records), "metric": key, "first": records[0][key], "last": records[-1][key],
            "wall_s": wall_s, "output": str(final)}


def _print_summary(rows: list[dict]) -> None:
    print("\n stage | steps | metric      |  first |   last | wall (s) | output")
    print("-------+-------+-------------+--------+--------+----------+------------------------")
    for r in rows:
        print(f" {r['stage']:5s} | {r['steps']:5d} | {r['metric']:11s} | {r['first']:6.3f} | {r['last']:6.3f} | "
              f"{r['wall_s']:8.1f} | {r['output']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from posttrain.config import ConfigError
    from posttrain.data.mixture import DataError
    from posttrain.sft import RunDirError

    try:
        {"tiny": cmd_tiny, "sft": cmd_sft, "demo": cmd_demo}[args.command](args)
    except (ConfigError, DataError, RunDirError, FileNotFoundError) as e:
        print(f"posttrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
