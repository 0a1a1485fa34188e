"""The tables, plot and page of `benchmarks/distill_quality.py`, from its results (WORK_DIR/results.json)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path


def accuracy(result: dict, task: str) -> float:
    return result["tasks"][task]["accuracy"]


def gap_closed(summary: dict, result: dict, task: str) -> float:
    """(arm − student start) / (teacher − student start), on the task's held-out accuracy."""
    start, teacher = accuracy(summary["start"], task), accuracy(summary["teacher"], task)
    return (accuracy(result, task) - start) / max(1e-9, teacher - start)


def row(summary: dict, label: str, result: dict, arm: dict | None) -> str:
    tasks = summary["tasks"]
    accs = " | ".join(f"{accuracy(result, t):.3f}" for t in tasks)
    gaps = " | ".join(f"{gap_closed(summary, result, t):+.0%}" if arm else "" for t in tasks)
    kl = f"{result['teacher_kl']['reverse_kl']:.3f}" if "teacher_kl" in result else ""
    if arm is None:
        return f"| {label} | {accs} | {gaps} | {kl} | | | | | |"
    f = arm["flops"]
    total = sum(f.values())
    return (f"| {label} | {accs} | {gaps} | {kl} | {total / 1e12:.2f} ({total / summary['budget']:.2f}) | "
            f"{f['student_train'] / 1e12:.2f} / {f['student_rollout'] / 1e12:.2f} / {f['teacher'] / 1e12:.2f} | "
            f"{arm['run']['steps']} | {arm['run']['wall_s']:.0f} |")


def print_table(summary: dict, keys: list[str] | None = None) -> str:
    tasks = summary["tasks"]
    header = (f"| model | {' | '.join(f'{t} acc' for t in tasks)} | {' | '.join(f'gap closed ({t})' for t in tasks)} | "
              "reverse KL to teacher | total TFLOPs (x budget) | student train / rollout / teacher TFLOPs | steps | wall s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    lines.append(row(summary, "teacher", summary["teacher"], None))
    lines.append(row(summary, "(a) student start, no distillation", summary["start"], None))
    variants = set(summary.get("variant_keys", []))
    for key in keys or [k for k in summary["arms"] if k not in variants]:
        if key in summary["arms"]:
            arm = summary["arms"][key]
            lines.append(row(summary, summary["labels"].get(key, key), arm["eval"], arm))
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Left: held-out accuracy per arm and task. Right: the OPD arms' in-loop accuracy against FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, arms = summary["tasks"], summary["arms"]
    variants = set(summary.get("variant_keys", []))
    shown = [k for k in arms if k not in variants]
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(6 + 5 * len(tasks), 6))
    wrap = lambda label: textwrap.fill(label, 34)  # noqa: E731  (the labels say what each arm ran; keep them whole)
    names = ["teacher", "student start"] + [wrap(summary["labels"].get(k, k)) for k in shown]
    results = [summary["teacher"], summary["start"]] + [arms[k]["eval"] for k in shown]
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        axes[0].barh([y + i * width for y in range(len(names))], [accuracy(r, task) for r in results], height=width, label=task)
    axes[0].set_yticks([y + width * (len(tasks) - 1) / 2 for y in range(len(names))], names)
    axes[0].set(xlabel="held-out accuracy (greedy)", xlim=(0, 1))
    axes[0].invert_yaxis()
    axes[0].legend()
    per_token = sum(summary["flops_per_token"].values())
    for ax, task in zip(axes[1:], tasks):
        for key in shown:
            points = [(r["tokens"], r[f"eval/{task}"]) for r in _cumulative(arms[key]["run"].get("curve", [])) if f"eval/{task}" in r]
            if points:
                ax.plot([t * per_token / 1e12 for t, _ in points], [a for _, a in points], marker="o",
                        label=wrap(summary["labels"].get(key, key)))
        ax.axhline(accuracy(summary["teacher"], task), color="grey", linestyle="--", label="teacher")
        ax.axhline(accuracy(summary["start"], task), color="grey", linestyle=":", label="student start")
        ax.set(xlabel="OPD TFLOPs", ylabel=f"{task} accuracy (64 eval prompts)", ylim=(0, 1), title=f"During OPD: {task}")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cumulative(rows: list[dict]) -> list[dict]:
    total, out = 0, []
    for r in rows:
        total += r.get("tokens", 0)
        out.append({**r, "tokens": total})
    return out


def lab_log(summary: dict) -> str:
    """Every variant run: accuracy, gap, KL, and the health metrics averaged over the run's last quarter."""
    tasks, arms = summary["tasks"], summary["arms"]
    lines = [f"| variant | {' | '.join(f'{t} acc (gap)' for t in tasks)} | reverse KL | grad norm | clipped steps | "
             "adv std | x budget |", "|" + "---|" * (6 + len(tasks))]
    for key in summary.get("variant_keys", []):
        if key not in arms:
            continue
        arm, result = arms[key], arms[key]["eval"]
        tail = arm["run"].get("curve", [])[-max(1, len(arm["run"].get("curve", [])) // 4):]
        mean = lambda name: (sum(r[name] for r in tail if r.get(name) is not None) /  # noqa: E731
                             max(1, sum(1 for r in tail if r.get(name) is not None))
                             if any(r.get(name) is not None for r in tail) else float("nan"))  # nan: not logged
        accs = " | ".join(f"{accuracy(result, t):.3f} ({gap_closed(summary, result, t):+.0%})" for t in tasks)
        lines.append(f"| {summary['labels'].get(key, key)} | {accs} | {result['teacher_kl']['reverse_kl']:.3f} | "
                     f"{mean('grad_norm'):.2f} | {mean('grad_clipped'):.0%} | {or_dash(mean('adv_std'))} | "
                     f"{sum(arm['flops'].values()) / summary['budget']:.2f} |")
    return "\n".join(lines)


def or_dash(value: float) -> str:
    """A metric the arm does not log (the dense modes have no advantages): a dash, not nan."""
    return "–" if value != value else f"{value:.2f}"


def write_docs(summary: dict, docs: Path) -> None:
    from benchmarks.distill_findings import findings

    a = summary["args"]
    text = f"""# Distillation quality at tiny scale: OPD against sequence-level KD at equal FLOPs

Measured by `python benchmarks/distill_quality.py` on this project's 2-core CPU (no GPU, shared with other
jobs), {time.strftime('%Y-%m-%d')}. Training the arms took {sum(arm['run']['wall_s'] for arm in summary['arms'].values()) / 60:.0f}
minutes in all (wall s per arm in the table; the last invocation {summary['total_wall_s'] / 60:.0f} minutes: finished arms are
reused on a rerun). `--docs-only` re-renders this page from `{a['work_dir']}/results.json`; `--variants` adds
the lab log's runs.

{findings(summary)}

## The table

Every arm starts from the same student and spends the same total FLOPs (budget {summary['budget'] / 1e12:.2f} TFLOPs:
{a['budget_steps']} steps of the card's OPD shape, {a['prompts_per_step']} prompts x {a['samples_per_prompt']} samples), counted as the OPD
literature counts it: student training (6·N_active per token + attention), student rollouts (2·N_active per
prompt and response token) and the teacher's forward passes (2·N_active,teacher per token: scoring the
student's samples for OPD, generating the answers to every train prompt for sequence-level KD).
Per token: student training {summary['flops_per_token']['student_train'] / 1e6:.2f} MFLOPs, student forward
{summary['flops_per_token']['student_forward'] / 1e6:.2f}, teacher forward {summary['flops_per_token']['teacher_forward'] / 1e6:.2f}.
An OPD arm's steps follow from the budget at the student start's sample length; its total is then what the
run did (its samples got longer or shorter), shown as a multiple of the budget. Accuracy is greedy exact
match on the held-out eval split ({a['eval_limit']} prompts per task at most; the splits never overlap); gap closed is
(arm − student start) / (teacher − student start); the reverse KL is the mean per-token
`log π_student − log π_teacher` on the model's own samples at temperature 1.

{print_table(summary)}

![accuracy per arm, and during OPD](distillation_quality.png)

## Lab log: every option tried

Each from the same student start at the same FLOPs budget (`python benchmarks/distill_quality.py --variants`;
the arms and their overrides are `benchmarks/distill_arms.py`). Health metrics are means over each run's
last quarter: the gradient norm before clipping, the share of steps whose gradient was clipped
(optim.grad_clip), the advantages' standard deviation over the global batch.

{lab_log(summary)}
"""
    docs.mkdir(exist_ok=True)
    (docs / "distillation_quality.md").write_text(text, encoding="utf-8")
