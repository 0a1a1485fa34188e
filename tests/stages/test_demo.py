"""`posttrain demo`: its summary (each stage's eval accuracy before and after it, from metrics alone),
and the OPD engines on the backend asked for (`--backend hf|vllm`)."""

import json

import pytest

from posttrain.cli import main
from posttrain.stages import demo
from posttrain.stages.demo import add_accuracy, print_summary, stage_rows


def _write(run_dir, rows):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_summary_shows_accuracy_before_and_after_each_stage(tmp_path, capsys):
    _write(tmp_path / "sft", [{"step": s, "loss": 3.0 - s / 10, "step_s": 1.0} for s in range(1, 7)])
    evals = {0: 0.25, 2: 0.5, 4: 0.75}
    opd = [{"step": 0, "eval/addition": 0.25}] + [
        {"step": s, "stage": 1 + (s > 2), "teacher": f"models/t{1 + (s > 2)}", "reverse_kl": 1.0 / s, "step_s": 2.0,
         **({"eval/addition": evals[s]} if s in evals else {})} for s in range(1, 5)]
    _write(tmp_path / "opd", opd)
    rows = stage_rows("sft", tmp_path / "sft", tmp_path / "sft" / "final", 9.0, "loss")
    rows += stage_rows("opd", tmp_path / "opd", tmp_path / "opd" / "final", 9.0, "reverse_kl")
    add_accuracy(rows, {"addition": 0.125}, tmp_path / "opd")
    assert [r["accuracy"] for r in rows] == ["addition 0.12 → 0.25", "addition 0.25 → 0.50", "addition 0.50 → 0.75"]
    print_summary(rows)
    table = capsys.readouterr().out
    assert "eval accuracy before → after" in table and "opd 2: t2" in table and "addition 0.50 → 0.75" in table


class Stop(Exception):
    pass


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_the_demo_runs_the_opd_engines_on_the_backend_asked_for(backend, tmp_path, monkeypatch):
    """SFT and OPD themselves are the stages' tests; here the OPD config the demo builds is caught."""
    seen = {}
    monkeypatch.setattr(demo, "run_sft", lambda cfg, overwrite: tmp_path / "sft" / "final")
    monkeypatch.setattr(demo, "stage_rows", lambda *args: [])
    monkeypatch.setattr(demo, "evaluate", lambda *args, **kwargs: {"tasks": {}})

    def run_opd(cfg, overwrite):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(demo, "run_opd", run_opd)
    with pytest.raises(Stop):
        main(["demo", "--output-dir", str(tmp_path), "--backend", backend])
    cfg = seen["cfg"]
    assert cfg.rollout.backend == cfg.teacher.backend == backend and cfg.model.path == str(tmp_path / "sft" / "final")
    assert [stage.backend for stage in cfg.teachers] == ["", "hf"]  # the qwen3_next teacher keeps hf (CPU vLLM cannot)
