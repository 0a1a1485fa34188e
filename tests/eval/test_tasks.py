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
    """Every row of the shipped mixtures, read as the stages read them (whatever the file's layout)."""
    from posttrain.data.mixture import load_mixture_spec, read_source_rows

    held_out = {e.prompt for task in TASKS for e in examples(task, "eval")}
    sources = [s for name in ("sft_tiny", "opd_tiny", "opd_tiny_card") for s in load_mixture_spec(f"data_mixtures/{name}.yaml").sources]
    assert {s.path.name for s in sources} >= {"tasks.jsonl", "math.jsonl", "multilingual.jsonl"}
    for source in sources:
        for row in read_source_rows(source):
            assert not {m["content"] for m in row["messages"]} & held_out, (source.path, row["id"])


def test_checkers():
    add = TaskExample("addition", "zh", "3加4等于多少？", "7", "3加4等于7。")
    assert is_correct(add, "3加4等于7。") and is_correct(add, "The answer is 7")
    assert not is_correct(add, "3加4等于8。") and not is_correct(add, "")
    rep = TaskExample("repeat", "en", "Repeat the word 'cat' 2 times, separated by spaces.", "cat cat", "cat cat")
    assert is_correct(rep, " cat cat\n") and not is_correct(rep, "cat cat cat")
    assert split_of("x") in ("train", "eval")


def test_chain_answers_are_several_dependent_steps():
    """Each step of a chain answer starts from the previous step's result, so a wrong first sum changes
    what follows; only the right final sum counts."""
    import re

    for example in all_examples("chain"):
        steps = re.findall(r"(\d+) \+ (\d+) = (\d+)\.", example.response)
        assert len(steps) == 2 and steps[1][0] == steps[0][2]
        assert all(int(a) + int(b) == int(c) for a, b, c in steps)
        assert is_correct(example, example.response) and example.answer == steps[1][2]
    chain = TaskExample("chain", "en", "Add 3, 5 and 8 step by step.", "16", "")
    assert is_correct(chain, "3 + 5 = 8. 8 + 8 = 16. The answer is 16.")
    assert not is_correct(chain, "3 + 5 = 9. 9 + 8 = 17. The answer is 17.")
    assert len(all_examples("chain")) == 1000
