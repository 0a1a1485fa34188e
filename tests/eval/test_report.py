"""`posttrain report` from metrics alone (no run): which plots an SFT and an OPD run get, and how they read."""

import json

from posttrain.eval.report import _Plots, write_report


def _write(run_dir, rows):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sft_rows(steps=12, layers=3, experts=8):
    return [{"step": s, "loss": 3.0 / s, "nll": 2.9 / s, "lr": 1e-3 * min(1, s / 4), "grad_norm": 1.0 / s, "tokens_per_s": 900.0,
             "step_s": 0.5, "expert_load": [[s + e for e in range(experts)] for _ in range(layers)],
             "expert_imbalance": [1.2] * layers} for s in range(1, steps + 1)]


def test_an_sft_report_plots_the_learning_rate_and_gradient_norm(tmp_path):
    run = tmp_path / "sft"
    _write(run, _sft_rows())
    page = write_report(run).read_text()
    assert "![optimizer.png](report/optimizer.png)" in page
    assert (run / "report" / "optimizer.png").stat().st_size > 1000


def test_the_expert_heatmap_has_whole_layer_and_expert_ticks(tmp_path):
    figures = {}
    plots = _Plots(_sft_rows(layers=3), tmp_path / "report")
    plots.save = lambda fig, name, caption: figures.update({name: fig})
    plots.expert_load()
    heatmap = figures["expert_load.png"].axes[0]
    for ticks in (heatmap.get_yticks(), heatmap.get_xticks()):
        assert all(float(t).is_integer() for t in ticks), ticks


def test_an_opd_report_draws_the_step_0_eval_as_the_baseline(tmp_path):
    run = tmp_path / "opd"
    rows = [{"step": 0, "eval/addition": 0.1, "eval/repeat": 0.2, "eval_s": 1.0}]
    rows += [{"step": s, "stage": 1 + (s > 3), "teacher": f"t{1 + (s > 3)}", "loss": 0.1, "reverse_kl": 1.0 / s, "lr": 1e-3,
              "grad_norm": 0.5, "tokens_per_s": 100.0, "step_s": 1.0, "rollout_s": 0.5, "teacher_s": 0.2, "train_s": 0.2,
              "sync_s": 0.1, **({"eval/addition": 0.1 * s, "eval/repeat": 0.2} if s % 3 == 0 else {})} for s in range(1, 7)]
    _write(run, rows)
    figures = {}
    plots = _Plots(rows, run / "report")
    plots.save = lambda fig, name, caption: figures.update({name: fig})
    plots.evals()
    line = figures["eval.png"].axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 3, 6]
    page = write_report(run).read_text()  # the step-0 record is not a training step in the page's summary
    assert "OPD run, 6 steps" in page and "| 2 | `t2` | 3 |" in page
