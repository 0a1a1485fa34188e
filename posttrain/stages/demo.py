"""`posttrain demo`: the tiny pipeline end to end — tiny models → SFT → OPD with the two-teacher
cascade — then one summary table, with the held-out accuracy before and after each stage, each teacher's
accuracy and the share of the teacher–student gap each cascade stage closed (so a newcomer sees whether
each stage helped, and towards what, not only that its loss fell)."""

from __future__ import annotations

import json
import time
from statistics import fmean
from pathlib import Path

from posttrain.config import OPDConfig, SFTConfig, load_config
from posttrain.eval.run import evaluate
from posttrain.infra.paths import resolve_path
from posttrain.stages.opd.loop import run_opd
from posttrain.stages.sft import run_sft

TINY_SFT = "configs/tiny/sft.yaml"
TINY_OPD = "configs/tiny/opd.yaml"


def run_demo(output_dir: str | Path, backend: str = "hf") -> list[dict]:
    """`backend`: the OPD engines (rollout and teacher), hf or vllm; a cascade stage that sets its own
    backend in the tiny config (the qwen3_next teacher: hf) keeps it."""
    out = Path(output_dir)
    rows = []
    started = time.perf_counter()
    sft_cfg = load_config(SFTConfig, resolve_path(TINY_SFT), [f"output_dir={out / 'sft'}"])
    final = run_sft(sft_cfg, overwrite=True)
    rows += stage_rows("sft", out / "sft", final, time.perf_counter() - started, "loss")

    opd_cfg = load_config(OPDConfig, resolve_path(TINY_OPD), [f"output_dir={out / 'opd'}", f"model.path={final}",
                                                              f"rollout.backend={backend}", f"teacher.backend={backend}"])
    # The SFT start and each teacher, measured as OPD measures the student (greedy, on the rollout worker's own
    # class): a stage can only be judged against where it started and the teacher it moves towards.
    print("[demo] eval of the SFT start and of the teachers ...", flush=True)
    before_sft = accuracy_of(sft_cfg.model.path, opd_cfg)
    teachers = {stage.path: accuracy_of(stage.path, opd_cfg) for stage in opd_cfg.teachers}
    started = time.perf_counter()
    opd_final = run_opd(opd_cfg, overwrite=True)
    rows += stage_rows("opd", out / "opd", opd_final, time.perf_counter() - started, "reverse_kl")
    add_accuracy(rows, before_sft, out / "opd", teachers)
    print_summary(rows)
    print(f"\noutputs: {out.resolve()} (metrics.jsonl, tensorboard/, checkpoints/ and final/ per stage)")
    return rows


def accuracy_of(model: str, opd_cfg: OPDConfig) -> dict[str, float]:
    """Greedy held-out accuracy per task, as the OPD stage's own eval measures its student."""
    result = evaluate(model, opd_cfg.eval.tasks, limit=opd_cfg.eval.limit, max_new_tokens=opd_cfg.rollout.max_new_tokens,
                      batch_size=opd_cfg.rollout.batch_size)
    return {task: r["accuracy"] for task, r in result["tasks"].items()}


def stage_rows(stage: str, run_dir: Path, final: Path, wall_s: float, key: str) -> list[dict]:
    """One summary row per stage (per cascade stage for OPD): mean of the first and last 5 steps."""
    records = [r for r in _records(run_dir) if key in r]  # training steps (not the step-0 eval)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{stage} {r['stage']}: {Path(r['teacher']).name}" if "teacher" in r else stage, []).append(r)
    rows = []
    for name, group in groups.items():
        values = [r[key] for r in group]
        head, tail = values[:5], values[-5:]
        # A cascade stage's time is the sum of its step times; a single stage gets its whole wall time.
        stage_s = wall_s if len(groups) == 1 else sum(r["step_s"] for r in group)
        rows.append({"stage": name, "teacher": group[0].get("teacher", ""), "steps": len(group),
                     "first_step": group[0]["step"], "last_step": group[-1]["step"],
                     "metric": key, "first": sum(head) / len(head), "last": sum(tail) / len(tail), "wall_s": stage_s,
                     "output": "", "accuracy": ""})
    rows[-1]["output"] = str(final)
    return rows


def add_accuracy(rows: list[dict], before_sft: dict[str, float], opd_dir: Path,
                 teachers: dict[str, dict[str, float]] | None = None) -> None:
    """Each row's eval accuracy before → after its stage: SFT from its start (measured here) to OPD's
    step-0 eval; each cascade stage from the eval before its first step to the one at its last. A
    cascade stage also gets its teacher's accuracy and the share of the teacher–student gap it closed
    ((after − before) / (teacher − before), on the mean over the tasks)."""
    evals = {r["step"]: {k.removeprefix("eval/"): v for k, v in r.items() if k.startswith("eval/") and not k.endswith("_len")}
             for r in _records(opd_dir)}
    evals = {step: acc for step, acc in evals.items() if acc}
    for row in rows:
        if row["stage"] == "sft":
            before, after = before_sft, evals.get(0)
        else:
            before, after = evals.get(row["first_step"] - 1), evals.get(row["last_step"])
        if not (before and after):
            continue
        tasks = [task for task in after if task in before]
        row["before"], row["after"] = fmean(before[t] for t in tasks), fmean(after[t] for t in tasks)
        row["accuracy"] = f"{row['before']:.2f} → {row['after']:.2f}" + (
            f" ({', '.join(f'{t} {before[t]:.2f} → {after[t]:.2f}' for t in tasks)})" if len(tasks) > 1 else "")
        teacher = (teachers or {}).get(row.get("teacher", ""))
        if teacher:
            row["teacher_accuracy"] = fmean(teacher[t] for t in tasks)
            gap = row["teacher_accuracy"] - row["before"]
            row["gap_closed"] = (row["after"] - row["before"]) / gap if gap > 0 else None


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def print_summary(rows: list[dict]) -> None:
    """One line per stage: its training metric's first and last 5 steps, the student's mean held-out
    accuracy before → after it, and for a cascade stage its teacher's accuracy and the gap closed."""
    width = max(len(r["stage"]) for r in rows)
    head = "student accuracy before → after"
    acc = max([len(head)] + [len(r["accuracy"]) for r in rows])
    print(f"\n {'stage':{width}s} | steps | metric     | first 5 | last 5 | {head:{acc}s} | teacher | gap closed | "
          "wall (s) | output")
    print(f"-{'-' * width}-+-------+------------+---------+--------+-{'-' * acc}-+---------+------------+----------+"
          "---------------------")
    for r in rows:
        teacher = f"{r['teacher_accuracy']:.2f}" if "teacher_accuracy" in r else ""
        gap = "" if r.get("gap_closed") is None else f"{r['gap_closed']:+.0%}"
        print(f" {r['stage']:{width}s} | {r['steps']:5d} | {r['metric']:10s} | {r['first']:7.3f} | {r['last']:6.3f} | "
              f"{r['accuracy']:{acc}s} | {teacher:>7s} | {gap:>10s} | {r['wall_s']:8.1f} | {r['output']}")
    print("\naccuracy: greedy, on the held-out eval split of the tasks the OPD config's eval names (their mean); "
          "gap closed: (after − before) / (teacher − before)")
