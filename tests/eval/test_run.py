"""`posttrain eval` on the tiny suite: the warmed-up teacher beats the random-init base student."""

import json

from posttrain.cli import main


def test_eval_ranks_the_tiny_teacher_above_the_base_student(tiny_models, tmp_path, capsys):
    results = {}
    for name in ("student", "teacher-next"):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--model", str(tiny_models[name]), "--tasks", "addition,repeat", "--limit", "48",
                     "--teacher", str(tiny_models["teacher-next"]), "--output", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "reverse KL to" in printed
    mean = {name: sum(t["accuracy"] for t in r["tasks"].values()) / len(r["tasks"]) for name, r in results.items()}
    assert mean["teacher-next"] > mean["student"], mean
    # A model's reverse KL to itself is zero up to float noise; the base student's is large.
    assert abs(results["teacher-next"]["teacher_kl"]["reverse_kl"]) < 1e-3
    assert results["student"]["teacher_kl"]["reverse_kl"] > 0.5
    assert set(results["student"]["tasks"]["addition"]["by_language"]) >= {"en", "zh", "ar", "hi", "th", "ru"}


def test_eval_refuses_an_unknown_task_before_loading_anything(tiny_models, capsys):
    assert main(["eval", "--model", str(tiny_models["student"]), "--tasks", "addition,sudoku"]) == 2
    assert "unknown task 'sudoku'" in capsys.readouterr().err
