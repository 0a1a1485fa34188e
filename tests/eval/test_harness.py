"""`posttrain eval` through lm-evaluation-harness, offline, on the tiny models: the local harness task
`posttrain_addition` (32 shipped rows) on both backends, its score checked against the score of the model's own
greedy answers computed here with transformers; the card suite failing fast with the hub offline; an unknown
task name refused before any model is loaded; the result table in `posttrain report`."""

import json
import re
import time

import pytest

from posttrain.cli import main
from tests.helpers import ROOT, require_vllm, run_cli

TASK = "posttrain_addition"
DATA = ROOT / "posttrain" / "eval" / "harness_tasks" / TASK / "addition.jsonl"
MAX_NEW_TOKENS = 24  # the task yaml's max_gen_toks
LIMIT = 16  # of its 32 rows: the harness takes the first 16
_GREEDY: dict = {}


def rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()][:LIMIT]


def greedy_answers(model_path) -> list[str]:
    """The model's greedy response to each row, from transformers' generate, one prompt at a time: the user turn in
    the chat template, up to 24 new tokens, stopped by the model's end tokens."""
    if str(model_path) in _GREEDY:
        return _GREEDY[str(model_path)]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    answers = []
    for row in rows():
        ids = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], add_generation_prompt=True,
                                            return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 eos_token_id=model.generation_config.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    _GREEDY[str(model_path)] = answers
    return answers


def hand_score(answers: list[str]) -> float:
    """Percent of rows whose answer's last integer is the sum (posttrain.eval.tasks.is_correct's rule for addition)."""
    right = sum(bool(n := re.findall(r"-?\d+", a)) and n[-1] == row["answer"] for a, row in zip(answers, rows()))
    return 100 * right / len(answers)


@pytest.mark.parametrize("model,backend", [("student", "hf"), ("student", "vllm"), ("teacher-moe", "vllm")])
def test_the_harness_score_is_the_score_of_the_models_own_greedy_answers(tiny_models, tmp_path, model, backend):
    if backend == "vllm":
        require_vllm()
    out = tmp_path / "eval"
    started = time.monotonic()
    done = run_cli(["eval", "--model", str(tiny_models[model]), "--tasks", TASK, "--backend", backend, "--dtype", "float32",
                    "--max-model-len", "512", "--limit", str(LIMIT), "--output-dir", str(out), "--log-samples"],
                   timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"{model} on {backend}: {time.monotonic() - started:.0f} s")
    result = json.loads((out / "harness_eval.json").read_text())
    (row,) = result["rows"]
    assert result["backend"] == backend and row["benchmark"] == TASK and row["examples"] == LIMIT
    answers = greedy_answers(tiny_models[model])
    served = [json.loads(line) for line in (out / "harness_samples" / f"{TASK}.seed0.jsonl").read_text().splitlines()]
    # The harness asked the model what it was asked here and got the same greedy answers (vLLM's float32 included).
    assert [s["response"] for s in sorted(served, key=lambda s: s["doc_id"])] == answers
    assert row["ours"] == pytest.approx(hand_score(answers), abs=1e-9)
    assert f"| {TASK} | {row['ours']:.1f} |" in done.stdout and "[eval] 1/1" in done.stdout
    if model == "teacher-moe":  # the warmed-up teacher gets some right: the score is not 0 by construction
        assert 0 < row["ours"] < 100


def test_the_card_suite_with_the_hub_offline_fails_in_seconds_naming_the_first_benchmark(tiny_models):
    started = time.monotonic()
    done = run_cli(["eval", "--suite", "card", "--model", str(tiny_models["student"])], timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert "benchmark MMLU (harness task mmlu_generative): cannot load its dataset cais/mmlu" in done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr and "HF_ENDPOINT" in done.stderr and "Traceback" not in done.stderr
    assert "[eval]" not in done.stdout  # no model was loaded
    assert elapsed < 60, elapsed


def test_an_unknown_harness_task_is_refused_with_the_closest_names_before_any_model(tmp_path, capsys):
    missing_model = tmp_path / "no-model-here"  # checked after the names: its error would show if they came first
    assert main(["eval", "--model", str(missing_model), "--tasks", "posttrain_additon"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'posttrain_additon'" in err and "closest: posttrain_addition" in err
    assert str(missing_model) not in err
    assert main(["eval", "--model", str(missing_model), "--tasks", "gsm8k,addition"]) == 2
    assert "mixes posttrain's tasks (addition)" in capsys.readouterr().err
    assert main(["eval", "--model", str(missing_model), "--tasks", "addition,sudoku"]) == 2
    assert "unknown task 'sudoku'" in capsys.readouterr().err


def test_report_shows_the_benchmark_table_of_a_run(tmp_path):
    from posttrain.eval.report import write_report
    from posttrain.eval.suite import load_suite, write_result, CARD_SUITE, _row

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "step_s": 1.0}) + "\n"
                                               for s in range(1, 4)))
    suite = load_suite(CARD_SUITE)
    rows = [_row(suite, b, 80.0 if b.tasks else None, "acc,none" if b.tasks else None, 10) for b in suite.benchmarks]
    write_result({"model": "m", "backend": "hf", "limit": 10, "command": "posttrain eval --model m --suite card",
                  "card_model": suite.card_model, "rows": rows}, run)
    page = write_report(run).read_text()
    assert "## Benchmarks (lm-evaluation-harness)" in page
    assert "| MMLU | 80.0 | 83.4 | -3.4 | avg@8 | `mmlu_generative` |" in page
    assert "| PolyMath | — | 44.7 | — | avg@8 | none: lm-eval 0.4.13 has no PolyMath task |" in page


def test_avg_at_k_is_the_mean_of_k_sampled_runs_and_a_missing_benchmark_keeps_its_row(tiny_models, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("card_model: Test\ngeneration: {sampling: {temperature: 1.0, top_p: 1.0}}\nbenchmarks:\n"
                     f"  - {{name: Addition, harness_task: {TASK}, scoring: avg@2, runs: 2, card: {{marco_mini: 50.0}}}}\n"
                     "  - {name: Absent, harness_task: null, reason: not in the harness, card: {marco_mini: 1.0}}\n")
    out = tmp_path / "eval"
    done = run_cli(["eval", "--model", str(tiny_models["teacher-moe"]), "--suite", str(suite), "--backend", "hf",
                    "--dtype", "float32", "--limit", "16", "--output-dir", str(out), "--log-samples"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [[json.loads(line) for line in (out / "harness_samples" / f"{TASK}.seed{s}.jsonl").read_text().splitlines()]
            for s in (0, 1)]
    assert [len(r) for r in runs] == [16, 16]
    assert [s["response"] for s in runs[0]] != [s["response"] for s in runs[1]]  # sampled, with another seed
    right = [sum(s["filtered"] == s["target"] for s in r) / len(r) for r in runs]
    addition, absent = json.loads((out / "harness_eval.json").read_text())["rows"]
    assert addition["ours"] == pytest.approx(100 * sum(right) / 2) and addition["runs"] == 2
    assert addition["difference"] == pytest.approx(addition["ours"] - 50.0)
    assert absent["ours"] is None and absent["card"] == 1.0 and absent["reason"] == "not in the harness"
