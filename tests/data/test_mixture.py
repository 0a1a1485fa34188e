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
