"""The tables, plot and page of `benchmarks/distill_quality.py`, from its results (WORK_DIR/results.json)."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path


def accuracy(result: dict, task: str) -> float:
    return result["tasks"][task]["accuracy"]


def gap_closed(summary: dict, result: dict, task: str) -> float:
    """(arm − student start) / (teacher − student start), on the task's held-out accuracy."""
    return gap_left(summary, accuracy(result, task), task)


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


def from_scratch_section(summary: dict) -> str:
    """The from-scratch regime's part of the page (kept in docs/data/distill_from_scratch.md by `save_regime`)."""
    from benchmarks.distill_findings import findings

    a = summary["args"]
    text = f"""Measured by `python benchmarks/distill_quality.py` on this project's 2-core CPU (no GPU, shared with other
jobs), {time.strftime('%Y-%m-%d')}. Training the arms took {sum(arm['run']['wall_s'] for arm in summary['arms'].values()) / 60:.0f}
minutes in all (wall s per arm in the table; the last invocation {summary['total_wall_s'] / 60:.0f} minutes: finished arms are
reused on a rerun). `--docs-only` re-renders this page from `{a['work_dir']}/results.json`; `--variants` adds
the lab log's runs.

{findings(summary)}

### The table

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

![accuracy per arm, and during OPD](data/distill_from_scratch.png)

### Lab log: every option tried

Each from the same student start at the same FLOPs budget (`python benchmarks/distill_quality.py --variants`;
the arms and their overrides are `benchmarks/distill_arms.py`). Health metrics are means over each run's
last quarter: the gradient norm before clipping, the share of steps whose gradient was clipped
(optim.grad_clip), the advantages' standard deviation over the global batch.

{lab_log(summary)}
"""
    return text



# --------------------------------------------------------------------------------------------------
# The card's regime (`--regime after-sft`) and the page that holds both regimes
# --------------------------------------------------------------------------------------------------

DATA = "data"  # under docs/: each regime's numbers, from which `--docs-only` re-renders the page
SCRATCH_JSON, SCRATCH_MD, SCRATCH_PNG = "distill_from_scratch.json", "distill_from_scratch.md", "distill_from_scratch.png"
AFTER_JSON = "distill_after_sft.json"
# One colour per family in both panels: seqKD blue, the card's sampled mode orange (brown at the tiny schedule), the
# recommended mode green (cyan at the tiny schedule).
COLORS = {"seqkd": "#1f77b4", "opd_sampled": "#ff7f0e", "opd_sampled_card": "#ff7f0e", "opd_sampled_tiny": "#8c564b",
          "opd_forward": "#2ca02c", "opd_forward_card": "#2ca02c", "opd_forward_tiny": "#17becf", "opd_reverse": "#9467bd",
          "sft_truth": "#7f7f7f"}
SHORT = {"seqkd": "continued seqKD", "opd_sampled_card": "OPD sampled (card), card's lr ratio",
         "opd_sampled_tiny": "OPD sampled (card), tiny schedule", "opd_forward_card": "OPD recommended, card's lr ratio",
         "opd_forward_tiny": "OPD recommended, tiny schedule"}


def mean_acc(result: dict, tasks: list[str]) -> float:
    return sum(accuracy(result, t) for t in tasks) / len(tasks)


def gap_left(summary: dict, acc: float, task: str | None = None) -> float:
    """(arm − plateau) / (teacher − plateau): the share of what was left after the plateau that the arm closed;
    on one task's accuracy, or (task None) on the mean over the tasks."""
    tasks = summary["tasks"] if task is None else [task]
    start, teacher = mean_acc(summary["start"], tasks), mean_acc(summary["teacher"], tasks)
    return (acc - start) / max(1e-9, teacher - start)


def seed_runs(summary: dict, config: str) -> list[dict]:
    """The arms of one configuration (AFTER_SFT_CONFIGS' key), seed 0 first."""
    return [summary["arms"][k] for k in sorted(summary["arms"]) if k.rsplit("_seed", 1)[0] == config]


def config_stats(summary: dict, config: str) -> dict:
    """Per configuration: accuracy per task and over the tasks, and gap closed, per seed and their mean."""
    tasks, runs = summary["tasks"], seed_runs(summary, config)
    acc = {t: [accuracy(r["eval"], t) for r in runs] for t in tasks}
    means = [mean_acc(r["eval"], tasks) for r in runs]
    gaps = [gap_left(summary, m) for m in means]
    avg = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"runs": runs, "acc": acc, "mean": means, "gap": gaps, "gap_mean": avg(gaps),
            "gap_task": {t: avg([gap_left(summary, a, t) for a in acc[t]]) for t in tasks},
            "tflops": avg([sum(r["flops"].values()) for r in runs]) / 1e12, "steps": [r["run"]["steps"] for r in runs],
            "wall": [r["run"]["wall_s"] for r in runs]}


def configs(summary: dict) -> list[tuple[str, str]]:
    """(key, label) of the configurations that ran, in AFTER_SFT_CONFIGS' order."""
    return [(key, label) for key, label, _ in summary["configs"] if seed_runs(summary, key)]


def after_sft_table(summary: dict) -> str:
    tasks = summary["tasks"]
    each = lambda xs, fmt: f"{fmt(sum(xs) / len(xs))} ({', '.join(fmt(x) for x in xs)})"  # noqa: E731
    acc = lambda x: f"{x:.3f}"  # noqa: E731
    pct = lambda x: f"{x:+.0%}"  # noqa: E731
    header = (f"| arm | {' | '.join(f'{t} acc: mean (seed 0, seed 1)' for t in tasks)} | mean acc over the tasks | "
              f"gap closed of what was left: mean (seed 0, seed 1) | {' | '.join(f'gap closed ({t})' for t in tasks)} | "
              "TFLOPs (x budget) | steps | wall s (seed 0, seed 1) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, result in (("teacher", summary["teacher"]),
                         (f"plateau student (SFT'd on the teacher's answers, {summary['plateau']['steps']} steps): the start",
                          summary["start"])):
        lines.append(f"| {name} | {' | '.join(acc(accuracy(result, t)) for t in tasks)} | "
                     f"{acc(mean_acc(result, tasks))} | | {' | '.join('' for _ in tasks)} | | | |")
    for key, label in configs(summary):
        c = config_stats(summary, key)
        lines.append(f"| {label} | {' | '.join(each(c['acc'][t], acc) for t in tasks)} | {each(c['mean'], acc)} | "
                     f"**{each(c['gap'], pct)}** | {' | '.join(pct(c['gap_task'][t]) for t in tasks)} | "
                     f"{c['tflops']:.2f} ({c['tflops'] * 1e12 / summary['budget']:.2f}) | "
                     f"{', '.join(str(x) for x in c['steps'])} | {', '.join(f'{w:.0f}' for w in c['wall'])} |")
    return "\n".join(lines)


def plateau_table(summary: dict) -> str:
    tasks, plateau = summary["tasks"], summary["plateau"]
    lines = [f"| segment | SFT steps | {' | '.join(tasks)} | mean | gain |", "|" + "---|" * (4 + len(tasks))]
    previous = None
    for seg in plateau["segments"]:
        mean = sum(seg["accuracy"].values()) / len(tasks)
        gain = "" if previous is None else f"{(mean - previous) * 100:+.1f} points"
        accs = " | ".join(f"{seg['accuracy'][t]:.3f}" for t in tasks)
        lines.append(f"| {seg['segment']} | {seg['steps']} | {accs} | "
                     f"{mean:.3f} | {gain} |")
        previous = mean
    return "\n".join(lines)


def from_scratch_points(summary: dict) -> dict:
    """The from-scratch regime's plot points (docs/data/distill_from_scratch.json), from a fresh run's summary."""
    tasks = summary["tasks"]
    variants = set(summary.get("variant_keys", []))
    return {"source": f"benchmarks/distill_quality.py (from-scratch), {time.strftime('%Y-%m-%d')}", "regime": "from-scratch",
            "tasks": tasks, "budget_tflops": summary["budget"] / 1e12, "budget_steps": summary["args"]["budget_steps"],
            "teacher": {t: accuracy(summary["teacher"], t) for t in tasks},
            "start": {t: accuracy(summary["start"], t) for t in tasks},
            "arms": {k: {"label": summary["labels"].get(k, k), "kind": a["spec"]["kind"],
                         "accuracy": {t: accuracy(a["eval"], t) for t in tasks},
                         "tflops": sum(a["flops"].values()) / 1e12, "steps": a["run"]["steps"], "wall_s": a["run"]["wall_s"]}
                     for k, a in summary["arms"].items() if k not in variants}}


def save_regime(summary: dict, docs: Path | None = None) -> None:
    """Keep a regime's numbers (and the from-scratch regime's own section and plot) under docs/data/."""
    data = (docs or Path(__file__).resolve().parents[1] / "docs") / DATA
    data.mkdir(parents=True, exist_ok=True)
    if summary.get("regime") == "after-sft":
        (data / AFTER_JSON).write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
        return
    (data / SCRATCH_JSON).write_text(json.dumps(from_scratch_points(summary), indent=1), encoding="utf-8")
    (data / SCRATCH_MD).write_text(from_scratch_section(summary), encoding="utf-8")
    plot(summary, data / SCRATCH_PNG)


def flops_plot(scratch: dict | None, after: dict | None, path: Path) -> None:
    """The page's lead: mean accuracy over the tasks against the FLOPs spent from the start, per arm, both regimes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend = {"fontsize": 8, "loc": "upper center", "bbox_to_anchor": (0.5, -0.1), "ncol": 2}
    if scratch:
        ax, tasks = axes[0], scratch["tasks"]
        m = lambda acc: sum(acc[t] for t in tasks) / len(tasks)  # noqa: E731
        start, teacher = m(scratch["start"]), m(scratch["teacher"])
        for i, (key, arm) in enumerate(scratch["arms"].items()):
            ax.plot([0, arm["tflops"]], [start, m(arm["accuracy"])], marker="o", color=COLORS.get(key, colors[i % len(colors)]),
                    linestyle="--" if arm["kind"] == "sft" else "-", label=textwrap.fill(arm["label"], 48))
        ax.axhline(teacher, color="black", linestyle="--", label=f"teacher ({teacher:.3f})")
        ax.axhline(start, color="grey", linestyle=":", label=f"student start ({start:.3f})")
        ax.set(title=f"From scratch: a weak student ({scratch['budget_tflops']:.2f} TFLOPs budget; start → end only)",
               xlabel="TFLOPs spent from the start", ylabel=f"held-out accuracy, mean of {', '.join(tasks)}", ylim=(0, 1))
        ax.legend(**legend)
    if after:
        ax, tasks = axes[1], after["tasks"]
        start, teacher = mean_acc(after["start"], tasks), mean_acc(after["teacher"], tasks)
        per_token = sum(after["flops_per_token"].values())
        lowest = start
        for i, (key, _) in enumerate(configs(after)):
            for seed, run in enumerate(seed_runs(after, key)):
                points = [(0.0, start)]
                for r in _cumulative(run["run"].get("curve", [])):
                    if r["tokens"] and all(f"eval/{t}" in r for t in tasks):
                        points.append((r["tokens"] * per_token / 1e12, sum(r[f"eval/{t}"] for t in tasks) / len(tasks)))
                points.append((sum(run["flops"].values()) / 1e12, mean_acc(run["eval"], tasks)))
                lowest = min(lowest, *(a for _, a in points))
                ax.plot(*zip(*points), marker="o" if seed == 0 else "s", markersize=4,
                        color=COLORS.get(key, colors[i % len(colors)]),
                        linestyle="-" if seed == 0 else "--", label=f"{SHORT.get(key, key)}, seed {seed}")
        ax.axhline(teacher, color="black", linestyle="--", label=f"teacher ({teacher:.3f})")
        ax.axhline(start, color="grey", linestyle=":", label=f"plateau start ({start:.3f})")
        ax.set(title=f"After SFT (the card's regime): from the plateau ({after['budget'] / 1e12:.2f} TFLOPs budget)",
               xlabel="TFLOPs spent from the plateau", ylabel=f"held-out accuracy, mean of {', '.join(tasks)}",
               ylim=(max(0.0, lowest - 0.05), min(1.0, max(teacher, start) + 0.05)))
        ax.legend(**legend)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def after_sft_section(summary: dict) -> str:
    from benchmarks.distill_findings import after_sft_findings

    a, plateau = summary["args"], summary["plateau"]
    suite = summary.get("suite", {})
    return f"""Measured by `python benchmarks/distill_quality.py --regime after-sft --models-dir {a['models_dir']} --work-dir {a['work_dir']} --threads {a['threads']}`
on this project's 2-core CPU (one core used; shared with other jobs), {summary.get('date', '')}; the invocation took
{summary['total_wall_s'] / 60:.0f} minutes (finished stages are reused on a rerun). Models: the tiny suite in
`{a['models_dir']}` ({suite_note(suite)}). The numbers are kept in `docs/data/{AFTER_JSON}`, from which
`--docs-only` re-renders this page.

{after_sft_findings(summary)}

### How it was measured

1. **Teacher**: the tiny `teacher-moe` SFT'd {a['teacher_steps']} steps on the tasks' train split (as in the from-scratch regime).
2. **Plateau student** (`plateau_student` in `benchmarks/distill_quality.py`): the tiny student SFT'd on the
   teacher's greedy answers to every train prompt (the seqKD mixture) in segments of {a['plateau_segment_steps']} steps, each a
   cosine cycle from lr 3e-3 (5 warm-up steps) to 3e-4 (warm restarts; each segment's data in another order),
   evaluated after each segment on the held-out split ({a['eval_limit']} prompts per task). **Stopping rule**: stop after the
   first segment whose mean accuracy over the tasks gains less than {a['plateau_min_gain'] * 100:.0f} points on the previous
   segment's, or after {a['plateau_max_segments']} segments. It stopped after {plateau['steps']} steps ({plateau['stopped']}); the SFT's final lr: {plateau['final_lr']:g}.

{plateau_table(summary)}

3. **Arms**, each from that plateau with two seeds (`trainer.seed=0`, `1`: the rollouts' sampling seed for OPD, the
   data order for seqKD), at the same total FLOPs: {summary['budget'] / 1e12:.2f} TFLOPs, {a['budget_steps']} steps of the card's OPD shape
   ({a['prompts_per_step']} prompts x {a['samples_per_prompt']} samples), counted as in the from-scratch regime (below). *The card's lr ratio*: a
   constant lr equal to the plateau SFT's final lr ({plateau['final_lr']:g}), no warm-up (the card: SFT 1e-5 → 1e-6, then OPD at
   a constant 1e-6). *The tiny config's schedule*: lr 3e-3, 10 warm-up steps, cosine to 3e-4. Continued seqKD is
   SFT on the same teacher answers at a constant lr = the SFT's final lr, charged no teacher FLOPs (the answers were
   already generated for the plateau SFT). Both tasks are trained on together.
4. **Scores**: greedy exact match on the held-out eval split ({a['eval_limit']} prompts per task at most). Gap closed is
   measured against what was left after the plateau: (arm − plateau) / (teacher − plateau), on the mean accuracy
   over the tasks (per task in its own columns). The plot's in-loop points are the OPD runs' own evaluations
   (greedy, on the same {a['eval_limit']} prompts per task); its end points are the table's.

### The table

{after_sft_table(summary)}
"""


def suite_note(suite: dict) -> str:
    """Which tiny suite the regime ran on: the repository's (models/tiny) or another copy, and its warm-up steps."""
    meta = suite.get("tiny_suite.json") or {}
    warm = meta.get("warm_up_steps")
    repo = Path(suite.get("dir", "")) == Path(__file__).resolve().parents[1] / "models" / "tiny"
    where = ("the repository's own, as `build_tiny_suite` builds it" if repo else
             "**not** the repository's `models/tiny`: a frozen copy of the suite as it was built before the tiny "
             "teachers' warm-up changed (issue 26); a rerun on the current suite may differ")
    return f"{where}; warm-up steps per model {warm}" if warm else where


def write_page(docs: Path) -> None:
    """docs/distillation_quality.md: the lead plot, the after-SFT regime, then the from-scratch regime; each from
    its numbers under docs/data/ (a regime not measured yet says so)."""
    data = docs / DATA
    load = lambda name: json.loads((data / name).read_text()) if (data / name).exists() else None  # noqa: E731
    scratch, after = load(SCRATCH_JSON), load(AFTER_JSON)
    flops_plot(scratch, after, docs / "distillation_quality.png")
    scratch_md = (data / SCRATCH_MD).read_text() if (data / SCRATCH_MD).exists() else "(not measured yet)\n"
    scratch_note = (
        "The first regime measured (2026-12-02): its results file (`runs/distill_quality/results.json`) was not kept, "
        f"so this section is the page of that run, kept as it was (`docs/data/{SCRATCH_MD}`), and the plot's left "
        f"panel is read from its table (`docs/data/{SCRATCH_JSON}`). A rerun (`python benchmarks/distill_quality.py`) "
        "replaces both." if scratch and scratch.get("source", "").startswith("Reconstructed") else
        f"Its section and numbers are kept in `docs/data/{SCRATCH_MD}` and `docs/data/{SCRATCH_JSON}` by the run.")
    after_md = after_sft_section(after) if after else "(not measured yet: `python benchmarks/distill_quality.py --regime after-sft`)\n"
    text = f"""# Distillation quality at tiny scale: OPD against sequence-level KD at equal FLOPs

![held-out accuracy against FLOPs, per arm: from scratch (left) and after SFT (right)](distillation_quality.png)

Held-out accuracy (mean over the tasks, addition and chain) against the FLOPs each arm spent from its start, in
both regimes. **Left, from scratch**: every arm from a weak student (start → end; the in-loop curves of that run are
in the from-scratch section's own plot below). **Right, after SFT** (the card's regime): every arm from a student
SFT'd on the teacher's answers until its accuracy plateaued; each arm two seeds (solid: seed 0, dashed: seed 1), the
OPD arms through their in-loop evaluations. Dashed black: the teacher; dotted grey: the start.

## After SFT: the card's regime

{after_md}
## From scratch: a weak student

{scratch_note}

{scratch_md}"""
    (docs / "distillation_quality.md").write_text(text, encoding="utf-8")
