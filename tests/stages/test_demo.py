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


def test_the_summary_shows_accuracy_before_and_after_each_stage_the_teachers_and_the_gap_closed(tmp_path, capsys):
    _write(tmp_path / "sft", [{"step": s, "loss": 3.0 - s / 10, "step_s": 1.0} for s in range(1, 7)])
    evals = {0: (0.25, 0.0), 2: (0.5, 0.25), 4: (0.75, 0.25)}
    opd = [{"step": 0, "eval/addition": 0.25, "eval/chain": 0.0}] + [
        {"step": s, "stage": 1 + (s > 2), "teacher": f"models/t{1 + (s > 2)}", "reverse_kl": 1.0 / s, "step_s": 2.0,
         **({"eval/addition": evals[s][0], "eval/chain": evals[s][1]} if s in evals else {})} for s in range(1, 5)]
    _write(tmp_path / "opd", opd)
    rows = stage_rows("sft", tmp_path / "sft", tmp_path / "sft" / "final", 9.0, "loss")
    rows += stage_rows("opd", tmp_path / "opd", tmp_path / "opd" / "final", 9.0, "reverse_kl")
    teachers = {"models/t1": {"addition": 0.75, "chain": 0.375}, "models/t2": {"addition": 1.0, "chain": 0.5}}
    add_accuracy(rows, {"addition": 0.125, "chain": 0.0}, tmp_path / "opd", teachers)
    assert [r["accuracy"] for r in rows] == ["0.06 → 0.12 (addition 0.12 → 0.25, chain 0.00 → 0.00)",
                                             "0.12 → 0.38 (addition 0.25 → 0.50, chain 0.00 → 0.25)",
                                             "0.38 → 0.50 (addition 0.50 → 0.75, chain 0.25 → 0.25)"]
    # mean teacher 0.5625 from 0.125: 0.25 of 0.4375 closed; then 0.75 from 0.375: 0.125 of 0.375
    assert [r.get("teacher_accuracy") for r in rows] == [None, 0.5625, 0.75]
    assert [r.get("gap_closed") for r in rows] == [None, 0.25 / 0.4375, 0.125 / 0.375]
    print_summary(rows)
    table = capsys.readouterr().out
    assert "student accuracy before → after" in table and "| teacher | gap closed |" in table and "opd 2: t2" in table
    assert "|    0.56 |       +57% |" in table and "|    0.75 |       +33% |" in table


@pytest.mark.slow  # the whole demo on the tiny suite, ~4 min: CI's slow step
def test_the_demo_shows_each_opd_stage_moving_the_student_towards_a_better_teacher(tiny_models, ray_local, tmp_path,
                                                                                    monkeypatch, capsys):
    """`posttrain demo` as a newcomer runs it, on the demo's own configs (the tiny suite from the test cache,
    where the configs look for it): each cascade stage raises the student's mean held-out accuracy by at
    least 5 points, towards a teacher better than the student it started from, the second teacher
    better than the first; the summary says so with the teachers' accuracy and the gap closed."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_models["student"].parent)
    monkeypatch.chdir(tmp_path)
    rows = demo.run_demo(tmp_path / "demo")
    table = capsys.readouterr().out
    sft, first, second = rows
    assert sft["after"] > sft["before"] and [first["stage"], second["stage"]] == ["opd 1: teacher-moe", "opd 2: teacher-next"]
    assert second["teacher_accuracy"] > first["teacher_accuracy"]
    for stage in (first, second):
        assert stage["after"] >= stage["before"] + 0.05, stage
        assert stage["teacher_accuracy"] > stage["before"] + 0.05, stage
        assert f"| {stage['teacher_accuracy']:7.2f} | {stage['gap_closed']:+10.0%} |" in table


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
