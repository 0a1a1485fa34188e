"""Mixture files for the data tests: a one-source mixture spec over a JSONL file of given lines."""

import json

from posttrain.data.mixture import load_mixture_spec, read_source_rows

GOOD = {"id": "g-0", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_mixture(tmp_path, lines: list[bytes | str | dict], weight="1.0", extra_source: str = "",
                  fmt: str = "messages") -> str:
    """`mix.yaml` with source 'a' reading `d.jsonl`, whose lines are `lines` (dicts as JSON, bytes as they are)."""
    data = tmp_path / "d.jsonl"
    with open(data, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            f.write(line if isinstance(line, bytes) else line.encode())
            f.write(b"\n")
    spec = tmp_path / "mix.yaml"
    spec.write_text(f"name: t\nsources:\n  - name: a\n    path: d.jsonl\n    format: {fmt}\n    weight: {weight}\n{extra_source}")
    return str(spec)


def rows(spec_path):
    """Every row of every source, read and checked."""
    spec = load_mixture_spec(spec_path)
    return [r for s in spec.sources for r in read_source_rows(s)]
