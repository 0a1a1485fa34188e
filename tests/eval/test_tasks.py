from posttrain.eval.tasks import ADDITION, TASKS, TaskExample, all_examples, examples, is_correct, split_of


def test_train_and_eval_splits_never_overlap_and_are_stable():
    for task in TASKS:
        train = {e.prompt for e in examples(task, "train")}
        held_out = {e.prompt for e in examples(task, "eval")}
        assert train and held_out and not train & held_out
        assert len(train) + len(held_out) == len(all_examples(task))
        assert 0.1 < len(held_out) / len(all_examples(task)) < 0.3
    assert examples("addition", "eval", limit=5, seed=3) == examples("addition", "eval", limit=5, seed=3)


def test_addition_covers_twelve_languages_in_seven_scripts():
    languages = {e.language for e in examples("addition", "eval")}
    assert languages == set(ADDITION) and len(languages) == 12
    prompts = " ".join(e.prompt for e in examples("addition", "eval"))
    for sample in ("加", "足す", "더하기", "زائد", "плюс", "योग", "บวก", "plus"):
        assert sample in prompts


def test_the_shipped_data_holds_no_eval_prompt():
    import json
    from pathlib import Path

    held_out = {e.prompt for task in TASKS for e in examples(task, "eval")}
    for path in Path("data_mixtures/data").rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts = {m["content"] for m in row.get("messages", [])} | {row.get("prompt")}
            assert not texts & held_out, (path, row["id"])


def test_checkers():
    add = TaskExample("addition", "zh", "3加4等于多少？", "7", "3加4等于7。")
    assert is_correct(add, "3加4等于7。") and is_correct(add, "The answer is 7")
    assert not is_correct(add, "3加4等于8。") and not is_correct(add, "")
    rep = TaskExample("repeat", "en", "Repeat the word 'cat' 2 times, separated by spaces.", "cat cat", "cat cat")
    assert is_correct(rep, " cat cat\n") and not is_correct(rep, "cat cat cat")
    assert split_of("x") in ("train", "eval")
