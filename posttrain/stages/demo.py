"""`posttrain demo`: the tiny pipeline end to end — tiny models → SFT → OPD with the two-teacher
cascade — then one summary table."""

from __future__ import annotations

import json
import time
from pathlib import Path

from posttrain.config import OPDConfig, SFTConfig, load_config
from posttrain.infra.paths import resolve_path
from posttrain.stages.opd.loop import run_opd
from posttrain.stages.sft import run_sft

TINY_SFT = "configs/tiny/sft.yaml"
TINY_OPD = "configs/tiny/opd.yaml"


def run_demo(output_dir: str | Path, backend: str = "hf") -> None:
    """`backend`: the OPD engines (rollout and teacher), hf or vllm; a cascade stage that sets its own
    backend in the tiny config (the qwen3_next teacher: hf) keeps it."""
    out = Path(output_dir)
    rows = []
    started = time.perf_counter()
    sft_cfg = load_config(SFTConfig, resolve_path(TINY_SFT), [f"output_dir={out / 'sft'}"])
    final = run_sft(sft_cfg, overwrite=True)
    rows += stage_rows("sft", out / "sft", final, time.perf_counter() - started, "loss")

    started = time.perf_counter()
    opd_cfg = load_config(OPDConfig, resolve_path(TINY_OPD), [f"output_dir={out / 'opd'}", f"model.path={final}",
                                                              f"rollout.backend={backend}", f"teacher.backend={backend}"])
    opd_final = run_opd(opd_cfg, overwrite=True)
    rows += stage_rows("opd", out / "opd", opd_final, time.perf_counter() - started, "reverse_kl")
    print_summary(rows)
    print(f"\noutputs: {out.resolve()} (metrics.jsonl, tensorboard/, checkpoints/ and final/ per stage)")


def stage_rows(stage: str, run_dir: Path, final: Path, wall_s: float, key: str) -> list[dict]:
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


def print_summary(rows: list[dict]) -> None:
    width = max(len(r["stage"]) for r in rows)
    print(f"\n {'stage':{width}s} | steps | metric     | first 5 | last 5 | wall (s) | output")
    print(f"-{'-' * width}-+-------+------------+---------+--------+----------+---------------------")
    for r in rows:
        print(f" {r['stage']:{width}s} | {r['steps']:5d} | {r['metric']:10s} | {r['first']:7.3f} | {r['last']:6.3f} | "
              f"{r['wall_s']:8.1f} | {r['output']}")
