"""`posttrain report RUN_DIR`: PNG plots from a run's `metrics.jsonl` and a one-page `report.md`.

Works for SFT and OPD runs alike: each plot is drawn from the keys the run logged, and a plot
whose keys are absent is left out (and the page says so).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.data.rows import DataError
from posttrain.eval.suite import RESULT_JSON, markdown_table

TIME_KEYS = ("rollout_s", "teacher_s", "train_s", "sync_s", "eval_s")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected the metrics of a posttrain sft/opd run)")
    rows = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # the line a run killed mid-write leaves: the steps before it are whole
                print(f"[report] {path}:{lineno}: the last line is cut short (a run stopped while writing it); "
                      f"reading the {len(rows)} whole steps before it", flush=True)
                break
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}); only the last line may be cut short") from None
    if not rows:
        raise FileNotFoundError(f"{path} holds no steps yet")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _boundaries(rows: list[dict]) -> list[tuple[int, str]]:
    """(first step, teacher) of each cascade stage after the first."""
    out, last = [], None
    for r in rows:
        if "stage" in r and r["stage"] != last:
            if last is not None:
                out.append((r["step"], Path(str(r.get("teacher", ""))).name))
            last = r["stage"]
    return out


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    plots = _Plots(rows, run_dir / "report")
    plots.loss()
    if plots.is_opd:
        plots.reverse_kl()
        plots.evals()
    plots.optimizer()
    plots.throughput()
    plots.time_split()
    plots.expert_load()
    page = run_dir / "report.md"
    page.write_text(_markdown(run_dir, plots.steps, plots.figures, plots.missing, plots.is_opd) + _benchmarks(run_dir),
                    encoding="utf-8")
    return page


def _benchmarks(run_dir: Path) -> str:
    """The benchmark table `posttrain eval --output-dir RUN_DIR` (or `--model RUN_DIR/final`) wrote, where there is one."""
    path = run_dir / RESULT_JSON
    if not path.exists():
        return ""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        table = markdown_table(result)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"\n## Benchmarks\n\n{path.name} could not be read ({type(e).__name__}: {e}).\n"
    return (f"\n## Benchmarks (lm-evaluation-harness)\n\n`{result.get('command', '')}` on {result.get('backend', '?')}"
            + (f", at most {result['limit']} examples per task" if result.get("limit") else "") + f":\n\n{table}\n")


class _Plots:
    """One method per figure; each draws from the keys the run logged, or notes what it could not draw."""

    def __init__(self, rows: list[dict], out: Path):
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt

        self.plt, self.rows, self.out = plt, rows, out
        self.steps = [r for r in rows if r.get("step", 0) > 0]  # training steps; step 0 holds only the baseline eval
        out.mkdir(exist_ok=True)
        self.is_opd = any("reverse_kl" in r for r in rows)
        self.figures: list[tuple[str, str]] = []  # (file, caption)
        self.missing: list[str] = []

    def save(self, fig, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        self.plt.close(fig)
        self.figures.append((name, caption))

    def axes(self, ylabel: str, title: str, **kwargs):
        fig, ax = self.plt.subplots(figsize=(7, 3.5))
        ax.set(xlabel="step", ylabel=ylabel, title=title, **kwargs)
        return fig, ax

    def mark_stages(self, ax) -> None:
        for step, teacher in _boundaries(self.rows):
            ax.axvline(step - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(step - 0.5, ax.get_ylim()[1], f" → {teacher}", va="top", fontsize=8, color="grey")

    def loss(self) -> None:
        fig, ax = self.axes("loss", "Loss")
        ax.plot(*_series(self.rows, "loss"), label="loss")
        if not self.is_opd and _series(self.rows, "nll")[0]:
            ax.plot(*_series(self.rows, "nll"), label="nll (assistant tokens)", alpha=0.7)
        ax.legend()
        self.mark_stages(ax)
        self.save(fig, "loss.png", "Training loss per step.")

    def reverse_kl(self) -> None:
        fig, ax = self.axes("reverse KL", "Reverse KL to the active teacher")
        ax.plot(*_series(self.rows, "reverse_kl"), marker=".", label="reverse KL (nats / response token)")
        self.mark_stages(ax)
        self.save(fig, "reverse_kl.png", "Mean per-token reverse KL to the active teacher on the student's own samples; "
                                         "dashed lines mark cascade boundaries (the teacher changes).")

    def evals(self) -> None:
        keys = sorted({k for r in self.rows for k in r if k.startswith("eval/") and not k.endswith("_len")})
        if not keys:
            return
        fig, ax = self.axes("accuracy", "Held-out task accuracy (greedy)", ylim=(0, 1))
        for key in keys:
            ax.plot(*_series(self.rows, key), marker="o", label=key.removeprefix("eval/"))
        ax.legend()
        self.mark_stages(ax)
        self.save(fig, "eval.png", "Accuracy on the verifiable tasks' eval split (`eval.every`); step 0 is the student "
                                   "before any OPD step.")

    def optimizer(self) -> None:
        steps, lrs = _series(self.steps, "lr")
        if not steps:
            self.missing.append("learning rate and gradient norm (no `lr` in the metrics)")
            return
        fig, (ax1, ax2) = self.plt.subplots(1, 2, figsize=(10, 3.5))
        ax1.plot(steps, lrs)
        ax1.set(xlabel="step", ylabel="learning rate", title="Learning rate (schedule)")
        ax2.plot(*_series(self.steps, "grad_norm"))
        ax2.set(xlabel="step", ylabel="gradient norm", title="Gradient norm (before clipping)")
        self.save(fig, "optimizer.png", "Learning rate per step (warm-up and decay) and the global gradient norm.")

    def throughput(self) -> None:
        fig, ax = self.axes("tokens / s", "Throughput")
        ax.plot(*_series(self.rows, "tokens_per_s"))
        self.mark_stages(ax)
        self.save(fig, "tokens_per_s.png", "Tokens trained per second of step time.")

    def time_split(self) -> None:
        parts = [k for k in TIME_KEYS if _series(self.rows, k)[0]]
        if not parts:
            self.missing.append("time split (an SFT step is all training: see `step_s`)")
            return
        fig, ax = self.axes("seconds", "Where a step's time goes")
        ax.stackplot([r["step"] for r in self.steps], *[[r.get(k, 0.0) for r in self.steps] for k in parts],
                     labels=[k.removesuffix("_s") for k in parts])
        ax.legend(loc="upper right")
        self.save(fig, "time_split.png", "Step time split between rollout, teacher scoring, training and weight sync.")

    def expert_load(self) -> None:
        import numpy as np
        from matplotlib.ticker import MaxNLocator

        loads = [r for r in self.rows if r.get("expert_load")]
        if not loads:
            self.missing.append("expert load (no `expert_load` in the metrics)")
            return
        load_LE = np.array(loads[-1]["expert_load"], dtype=float)
        share_LE = load_LE / load_LE.sum(axis=1, keepdims=True)
        fig, (ax1, ax2) = self.plt.subplots(1, 2, figsize=(10, 3.5))
        image = ax1.imshow(share_LE, aspect="auto", cmap="viridis")
        ax1.set(xlabel="expert", ylabel="layer", title=f"Expert load share, step {loads[-1]['step']}")
        for axis in (ax1.xaxis, ax1.yaxis):  # layers and experts are whole numbers
            axis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=ax1)
        imbalance = np.array([r["expert_imbalance"] for r in loads])
        for layer in range(imbalance.shape[1]):
            ax2.plot([r["step"] for r in loads], imbalance[:, layer], label=f"layer {layer}")
        ax2.set(xlabel="step", ylabel="busiest / mean", title="Expert-load imbalance per layer")
        if imbalance.shape[1] <= 8:
            ax2.legend(fontsize=8)
        self.save(fig, "expert_load.png", "Routed tokens per expert and layer (last step), and the imbalance over steps.")


def _markdown(run_dir: Path, rows: list[dict], figures: list, missing: list, is_opd: bool) -> str:
    key = "reverse_kl" if is_opd else "loss"
    head, tail = rows[:5], rows[-5:]
    mean = lambda part: sum(r[key] for r in part) / len(part)  # noqa: E731
    wall = sum(r.get("step_s", 0.0) for r in rows)
    lines = [f"# Run report: `{run_dir}`", "",
             f"{'OPD' if is_opd else 'SFT'} run, {len(rows)} steps, {wall:.1f} s of step time. "
             f"Mean {key} of the first 5 steps {mean(head):.4f}, of the last 5 {mean(tail):.4f}.", ""]
    if is_opd:
        lines += ["| cascade stage | teacher | steps | reverse KL first 5 | last 5 |", "|---|---|---|---|---|"]
        for stage in sorted({r["stage"] for r in rows}):
            part = [r for r in rows if r["stage"] == stage]
            lines.append(f"| {stage} | `{part[0]['teacher']}` | {len(part)} | {mean(part[:5]):.4f} | {mean(part[-5:]):.4f} |")
        lines.append("")
    for name, caption in figures:
        lines += [f"![{name}](report/{name})", "", caption, ""]
    if missing:
        lines += ["Not drawn: " + "; ".join(missing) + ".", ""]
    lines.append("Regenerate with `posttrain report " + str(run_dir) + "`.")
    return "\n".join(lines) + "\n"
