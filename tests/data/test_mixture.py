import json

import pytest

from posttrain.data.mixture import DataError, load_mixture, load_mixture_spec
from tests.helpers import GOOD, rows, write_mixture


@pytest.mark.parametrize("bad_line, message", [
    ('{"messages": [', r"d\.jsonl:2: malformed JSON"),
    ({"id": "x"}, r"d\.jsonl:2: missing 'messages'"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"d\.jsonl:2: message 0 has unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]},
     r"d\.jsonl:2: message 1 is an empty assistant turn"),
    (b'{"messages": "\xff\xfe"}', r"d\.jsonl:2: not valid UTF-8"),
])
def test_bad_rows_are_refused_with_file_and_line(tmp_path, bad_line, message):
    spec = write_mixture(tmp_path, [GOOD, bad_line])
    with pytest.raises(DataError, match=message):
        rows(spec)


@pytest.mark.parametrize("weight, message", [("-1", "'weight' must be a finite number > 0, got -1"),
                                             (".nan", "'weight' must be a finite number > 0, got nan"),
                                             ("0", "'weight' must be a finite number > 0, got 0")])
def test_bad_weights_are_refused(tmp_path, weight, message):
    with pytest.raises(DataError, match=message):
        load_mixture_spec(write_mixture(tmp_path, [GOOD], weight=weight))


def test_missing_file_and_duplicate_names_are_refused(tmp_path):
    spec = write_mixture(tmp_path, [GOOD], extra_source="  - {name: b, path: nope.jsonl, format: messages, weight: 1}\n")
    with pytest.raises(DataError, match=r"source 'b': source file not found: .*nope\.jsonl"):
        load_mixture_spec(spec)
    spec = write_mixture(tmp_path, [GOOD], extra_source="  - {name: a, path: d.jsonl, format: messages, weight: 1}\n")
    with pytest.raises(DataError, match="duplicate source name 'a'"):
        load_mixture_spec(spec)


def test_formats_are_normalised_and_weights_are_followed(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"q{i}", "completion": f"a{i}"})
                                                for i in range(50)))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({**GOOD, "id": f"m{i}"}) for i in range(50)))
    (tmp_path / "mix.yaml").write_text(
        "name: t\nseed: 3\nsources:\n"
        "  - {name: pc, path: p.jsonl, format: prompt_completion, weight: 3}\n"
        "  - {name: msg, path: m.jsonl, format: messages, weight: 1}\n")
    mixture = load_mixture(load_mixture_spec(tmp_path / "mix.yaml"))
    first = mixture[0:40]
    share = first["source"].count("pc") / 40
    assert 0.6 < share < 0.9  # 3:1 weights
    pc = next(r for r in mixture if r["source"] == "pc")
    assert pc["messages"] == [{"role": "user", "content": pc["messages"][0]["content"]},
                              {"role": "assistant", "content": "a" + pc["id"][1:]}]
    again = load_mixture(load_mixture_spec(tmp_path / "mix.yaml"))
    assert again["id"] == mixture["id"]  # deterministic from the seed


def test_a_prompt_of_chat_messages_in_a_nested_field_is_a_conversation(tmp_path):
    """NeMo-Gym records keep the prompt in `responses_create_params.input`, as OpenAI Responses API items: a
    developer turn is the system turn, and content may be a list of text parts."""
    record = {"id": 7, "responses_create_params": {"input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": "What is 2 + 2?"}]}, "verifier": {"expected": "4"}}
    spec = write_mixture(tmp_path, [record], fmt="prompt", extra_source="    prompt_field: responses_create_params.input\n"
                                                                         "    answer_field: verifier.expected\n")
    (row,) = rows(spec)
    assert row["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    assert (row["id"], row["answer"]) == ("7", "4")


@pytest.mark.parametrize("prompt, message", [
    ([{"role": "system", "content": "x"}], r"d\.jsonl:1: 'prompt' holds chat messages but no user turn"),
    ([{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}],
     r"d\.jsonl:1: message 0: content parts of type \['input_image'\]; only text parts"),
    (None, r"d\.jsonl:1: missing or empty 'prompt' \(format 'prompt'\); expected a string or a list of \{role, content\}"),
])
def test_a_prompt_that_is_no_conversation_is_refused_saying_what_was_expected(tmp_path, prompt, message):
    spec = write_mixture(tmp_path, [{"prompt": prompt}], fmt="prompt")
    with pytest.raises(DataError, match=message):
        rows(spec)


def test_take_uses_a_seeded_sample_and_the_epoch_estimate_follows_it(tmp_path):
    from posttrain.data.mixture import epoch_rows

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "prompt": f"q{i}"}) + "\n" for i in range(40)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"r{i}"}) + "\n" for i in range(10)))
    (tmp_path / "mix.yaml").write_text("sources:\n  - {name: a, path: a.jsonl, format: prompt, take: 20, weight: 2}\n"
                                       "  - {name: b, path: b.jsonl, format: prompt, weight: 1}\n")
    spec = load_mixture_spec(tmp_path / "mix.yaml")
    assert epoch_rows(spec)[0] == 30  # 20 of a's rows + b's 10, weights following the rows
    mixture = load_mixture(spec)
    taken = {i for i in mixture["id"] if i.startswith("a")}
    assert len(taken) == 20 and taken == {i for i in load_mixture(spec)["id"] if i.startswith("a")}
    assert abs(len(mixture) - 30) <= 6
