"""configs/marco_mini/eval.yaml against the model card's evaluation tables: every row there, with the card's
scores; every harness task a real lm-eval task; the card's scoring (Avg@8, Acc@1 for GlobalMMLU and MMMLU).
The card's rows are copied here (the card itself, ../shared/seeds, is not in the repository)."""

import json

from posttrain.eval.suite import CARD_SUITE, load_suite

# The card's three tables: benchmark -> (Qwen3-4B, Ministral3-8B, Gemma3-12B, Granite4-Small, LFM2-24B-A2B, Marco-Mini).
# 28 rows: 26 benchmarks, FLORES-200 and WMT24++ in both directions (the "25" counts them short).
CARD = {
    "MMLU": (80.8, 79.8, 76.2, 76.7, 74.9, 83.4),
    "MMLU-Redux": (80.9, 79.9, 76.2, 76.7, 74.9, 83.5),
    "MMLU-Pro": (66.9, 63.9, 55.8, 57.1, 57.6, 70.7),
    "AGIEval": (51.7, 52.4, 43.6, 44.7, 49.0, 55.4),
    "GPQA-Diamond": (50.8, 44.8, 35.2, 38.6, 39.7, 50.3),
    "GSM8K": (88.6, 89.5, 89.7, 83.9, 87.2, 93.1),
    "MATH": (93.4, 86.2, 83.8, 75.7, 83.9, 91.8),
    "GlobalMMLU": (70.2, 55.4, 69.2, 67.4, 57.0, 73.3),
    "MMMLU": (71.3, 56.4, 69.4, 68.1, 62.3, 73.7),
    "MMLU-ProX-Lite": (58.3, 43.3, 51.3, 51.6, 43.3, 61.2),
    "MGPQA": (41.0, 30.5, 32.8, 35.0, 32.7, 41.8),
    "FLORES-200 En→Xx": (22.1, 17.5, 35.6, 31.9, 19.2, 30.6),
    "FLORES-200 Xx→En": (33.5, 31.0, 40.3, 32.2, 22.7, 36.8),
    "WMT24++ En→Xx": (20.9, 14.4, 32.1, 26.6, 16.0, 26.8),
    "WMT24++ Xx→En": (29.9, 24.2, 35.5, 27.5, 18.8, 31.3),
    "MGSM": (84.4, 68.7, 84.0, 75.7, 67.8, 87.4),
    "PolyMath": (47.2, 26.4, 35.5, 28.9, 29.3, 44.7),
    "INCLUDE": (63.8, 50.7, 65.0, 60.3, 49.1, 65.6),
    "Global-PIQA": (79.6, 61.3, 82.2, 80.2, 69.0, 84.2),
    "CMMLU": (78.6, 67.4, 60.8, 59.6, 56.7, 75.3),
    "C-Eval": (80.4, 68.0, 59.7, 59.4, 56.7, 75.4),
    "ArabicMMLU": (66.0, 41.4, 70.1, 66.3, 61.3, 67.8),
    "TurkishMMLU": (71.6, 48.2, 64.4, 57.9, 33.4, 74.7),
    "GreekMMLU": (68.6, 49.5, 77.7, 71.7, 44.7, 72.5),
    "KazakhMMLU": (66.6, 59.1, 66.8, 63.5, 47.6, 68.8),
    "IndoMMLU": (64.4, 52.4, 65.3, 59.6, 42.7, 65.7),
    "IndoCareer": (62.2, 53.4, 63.2, 56.3, 43.7, 64.4),
    "IndoCulture": (58.7, 47.8, 69.6, 59.3, 44.2, 67.1),
}
MODELS = ("qwen3_4b", "ministral3_8b", "gemma3_12b", "granite4_small", "lfm2_24b_a2b", "marco_mini")


def test_eval_yaml_covers_every_row_of_the_cards_tables_with_its_scores():
    suite = load_suite(CARD_SUITE)
    names = [b.name for b in suite.benchmarks]
    assert len(names) == len(set(names)) == len(CARD) == 28
    assert set(names) == set(CARD), set(names) ^ set(CARD)
    for bench in suite.benchmarks:
        assert tuple(bench.card[m] for m in MODELS) == CARD[bench.name], bench.name
        assert bench.tasks or bench.reason, f"{bench.name}: no harness task and no reason"
    assert suite.baselines == MODELS[:-1]


def test_scoring_is_the_cards():
    """'Avg@8 accuracies are reported, except for GlobalMMLU and MMMLU where Acc@1 is reported.'"""
    for bench in load_suite(CARD_SUITE).benchmarks:
        assert bench.scoring == ("acc@1" if bench.name in ("GlobalMMLU", "MMMLU") else "avg@8"), bench.name
        if bench.tasks:  # Avg@8: 8 sampled runs; a log-likelihood task runs once (every run is the same)
            assert bench.runs in ((1,) if bench.scoring == "acc@1" else (1, 8)), bench.name


def test_every_harness_task_of_the_suite_is_an_lm_eval_task():
    from posttrain.eval.harness import check_task_names, task_manager

    suite = load_suite(CARD_SUITE)
    check_task_names([t for b in suite.benchmarks for t in b.tasks], task_manager())  # raises on an unknown name
    assert sum(bool(b.tasks) for b in suite.benchmarks) == 18


def test_the_local_harness_task_ships_the_eval_split_of_addition():
    """Its rows are posttrain's own held-out addition prompts: never in the shipped training data."""
    from posttrain.eval.tasks import examples
    from tests.eval.test_harness import DATA

    shipped = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    expected = examples("addition", "eval", limit=32, seed=0)
    assert [(r["question"], r["answer"]) for r in shipped] == [(e.prompt, e.answer) for e in expected]
