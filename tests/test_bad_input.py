"""The bad-input catalogue in one table: each case is refused by the cheap check that runs before
any model, Ray or data work, with a message that names the file and line or the config field and
says what was expected. (Cases that need the tiny models or a run directory follow the table; the
teacher-vocabulary case is tests/stages/opd/test_opd.py, ENOSPC is tests/infra/test_checkpoint.py.)"""

from __future__ import annotations

import json

import pytest

from posttrain.config import ConfigError, ModelConfig, OPDConfig, SFTConfig, load_config
from posttrain.data.mixture import DataError
from tests.helpers import GOOD, write_mixture, rows as read_all


def mixture(tmp_path, line, fmt="messages", weight="1", extra="") -> str:
    """A one-source mixture whose file holds a good row and then `line` (line 2)."""
    first = GOOD if fmt == "messages" else {"prompt": "hi", "completion": "hello"}
    return write_mixture(tmp_path, [first, line], weight=weight, extra_source=extra, fmt=fmt)


DATA_CASES = {
    "malformed JSON line": (dict(line='{"messages": ['), r"d\.jsonl:2: malformed JSON \(.* at column \d+\)"),
    "missing messages": (dict(line={"id": "x"}), r"d\.jsonl:2: missing 'messages' \(format 'messages' needs a list"),
    "missing prompt": (dict(line={"completion": "x"}, fmt="prompt_completion"),
                       r"d\.jsonl:2: missing or empty 'prompt' \(format 'prompt_completion'\)"),
    "unknown role": (dict(line={"messages": [{"role": "robot", "content": "x"}]}),
                     r"d\.jsonl:2: message 0 has unknown role 'robot'; expected one of \['system', 'user', 'assistant', 'tool'\]"),
    "empty assistant turn": (dict(line={"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}),
                             r"d\.jsonl:2: message 1 is an empty assistant turn"),
    "non-UTF-8 bytes": (dict(line=b'{"messages": "\xff\xfe"}'), r"d\.jsonl:2: not valid UTF-8 \(byte 14: b'\\xff'\)"),
    "negative weight": (dict(line={}, weight="-1"), r"source 'a': 'weight' must be a finite number > 0, got -1"),
    "zero weight (a zero-sum mixture)": (dict(line={}, weight="0"), r"source 'a': 'weight' must be a finite number > 0, got 0"),
    "NaN weight": (dict(line={}, weight=".nan"), r"source 'a': 'weight' must be a finite number > 0, got nan"),
    "missing source path": (dict(line={}, extra="  - {name: b, path: nope.jsonl, format: messages, weight: 1}\n"),
                            r"mix\.yaml: source 'b': source file not found: .*nope\.jsonl"),
    "duplicate source names": (dict(line={}, extra="  - {name: a, path: d.jsonl, format: messages, weight: 1}\n"),
                               r"mix\.yaml: source 'a': duplicate source name 'a' \(names must be unique\)"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_is_refused_with_file_and_line(tmp_path, case):
    kwargs, message = DATA_CASES[case]
    with pytest.raises(DataError, match=message):
        read_all(mixture(tmp_path, **kwargs))


CONFIG_CASES = {
    "unknown config key": (SFTConfig, ["trainer.num_worker=2"],
                           r"configs/tiny/sft\.yaml: unknown key 'trainer\.num_worker'; did you mean 'trainer\.num_workers'\?"),
    "wrong type": (SFTConfig, ["trainer.global_batch_size=many"],
                   r"'trainer\.global_batch_size' expected int, got str 'many'"),
    "cascade step count 0": (OPDConfig, ["teachers=[{path: t, steps: 0}]"], r"'teachers\[0\]\.steps' \(t\) must be > 0, got 0"),
    "cascade step count < 0": (OPDConfig, ["teachers=[{path: t, steps: 2}, {path: u, steps: -1}]"],
                               r"'teachers\[1\]\.steps' \(u\) must be > 0, got -1"),
    "negative restart limit": (OPDConfig, ["rollout.max_restarts=-1"], r"'rollout\.max_restarts' must be >= 0, got -1"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_is_refused_with_the_field(case):
    cls, overrides, message = CONFIG_CASES[case]
    path = "configs/tiny/sft.yaml" if cls is SFTConfig else "configs/tiny/opd.yaml"
    with pytest.raises(ConfigError, match=message):
        load_config(cls, path, overrides)


def test_a_cascade_step_count_on_the_command_line_must_be_positive():
    from posttrain.stages.args import parse_teachers

    with pytest.raises(ConfigError, match=r"--teacher t:0: the step count must be > 0"):
        parse_teachers(["t:0"], [])


def test_a_missing_model_path_is_refused(tmp_path):
    from posttrain.stages.opd.checks import check_student
    from posttrain.stages.driver import load_tokenizer

    with pytest.raises(FileNotFoundError, match=rf"model\.path: {tmp_path}/none does not exist \(expected a local directory or a hub id"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "none")))
    cfg = load_config(OPDConfig, "configs/tiny/opd.yaml", [f"model.path={tmp_path}/sft/final"])
    with pytest.raises(FileNotFoundError, match=r"model\.path: the student .*sft/final does not exist\. .*posttrain sft"):
        check_student(cfg)


def test_an_output_dir_holding_another_run_is_refused_unless_resume_or_overwrite(tmp_path):
    from posttrain.stages.driver import RunDirError, prepare_output_dir

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunDirError, match=rf"{out} already holds a run; pass --resume to continue it or --overwrite"):
        prepare_output_dir(out, resume=False, overwrite=False)
    prepare_output_dir(out, resume=True, overwrite=False)
    assert (out / "checkpoints").exists()
    prepare_output_dir(out, resume=False, overwrite=True)
    assert not (out / "checkpoints").exists()


def _sft_data(tmp_path, tokenizer, rows, **data):
    from posttrain.config import DataConfig
    from posttrain.data.sft import SFTData

    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s.yaml").write_text("name: s\nsources:\n  - {name: s, path: s.jsonl, format: messages, weight: 1}\n")
    return SFTData(DataConfig(mixture=str(tmp_path / "s.yaml"), **data), tokenizer, seed=0)


def test_sft_refuses_a_conversation_without_an_assistant_turn(tmp_path, tokenizer):
    rows = [GOOD, {"id": "p-1", "messages": [{"role": "user", "content": "only a question"}]}]
    with pytest.raises(DataError, match=r"s\.yaml: source 's' example 'p-1' has no assistant turn; SFT needs at least one"):
        _sft_data(tmp_path, tokenizer, rows)


def test_overlong_examples_are_truncated_or_dropped_and_counted(tmp_path, tokenizer):
    long = {"id": "long", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 200}]}
    rows = [GOOD, long, {**long, "id": "long2"}]
    kept = _sft_data(tmp_path, tokenizer, rows, max_seq_len=64, pack_tokens=64, overlong_policy="truncate")
    assert (kept.report.kept, kept.report.truncated, kept.report.dropped_overlong) == (3, 2, 0)
    assert "3/3 examples kept; 2 truncated, 0 dropped as over-long" in kept.report.line()
    dropped = _sft_data(tmp_path, tokenizer, rows, max_seq_len=64, pack_tokens=64, overlong_policy="drop")
    assert (dropped.report.kept, dropped.report.truncated, dropped.report.dropped_overlong) == (1, 0, 2)
    with pytest.raises(DataError, match=r"no example is left after the length policy \(0/3 examples kept; 0 truncated, "
                                        r"3 dropped as over-long"):
        _sft_data(tmp_path, tokenizer, rows, max_seq_len=8, pack_tokens=64, overlong_policy="drop")
