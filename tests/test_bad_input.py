"""The bad-input catalogue in one table: each case is refused by the cheap check that runs before
any model, Ray or data work, with a message that names the file and line or the config field and
says what was expected. (Cases that need the tiny models or a run directory follow the table; the
teacher-vocabulary case is tests/stages/opd/test_opd.py, ENOSPC is tests/infra/test_checkpoint.py.)

The second half is what a user meets on the command line (`posttrain.cli.main`, or the command in
a process of its own where a signal or a kill is the case): each case's exit status, a message
that names the problem, no traceback, and then the corrected command runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from posttrain.config import ConfigError, ModelConfig, OPDConfig, SFTConfig, load_config
from posttrain.data.mixture import DataError
from tests.helpers import (FAULT_RUN, GOOD, ROOT, TINY_OPD, TINY_SFT, hold_a_run, prompt_ids, records, run_cli, small_sft_mixture,
                           same_weights, signal_when, write_mixture, rows as read_all)


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
    # Issue 24 row 7: each colocated actor holds a third of its bundle's one GPU; an engine asking for TP 4 there
    # used to start anyway.
    "colocated engine with tensor parallel": (OPDConfig, ["rollout.colocate=true", "teacher.gpus_per_worker=4"],
                                              r"'rollout\.colocate' runs each teacher engine on its bundle's one device, "
                                              r"but 'teacher\.gpus_per_worker' is 4 \(tensor parallel\)"),
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
    from posttrain.models.locate import ModelError
    from posttrain.stages.opd.checks import check_student
    from posttrain.stages.driver import load_tokenizer

    with pytest.raises(ModelError, match=rf"model\.path: {tmp_path}/none does not exist \(expected a local directory or a hub id"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "none")))
    cfg = load_config(OPDConfig, "configs/tiny/opd.yaml", [f"model.path={tmp_path}/sft/final"])
    with pytest.raises(ModelError, match=r"model\.path: the student .*sft/final does not exist\. .*posttrain sft"):
        check_student(cfg)


def test_an_output_dir_holding_another_run_is_refused_unless_resume_or_overwrite(tmp_path):
    from posttrain.stages.driver import RunDirError, prepare_output_dir

    out = hold_a_run(tmp_path / "run")
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


# --------------------------------------------------------------------------------------------------
# On the command line: exit status, a message naming the problem, no traceback, the fix then runs
# --------------------------------------------------------------------------------------------------


def cli(capsys, *argv: str) -> tuple[int, str]:
    """`posttrain ARGV` in this process: its exit status and what it printed (a traceback would be an
    exception here, failing the test)."""
    from posttrain.cli import main

    status = main(list(argv))
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "Traceback" not in text, text
    return status, text


def broken_copies(tiny_models, tmp_path) -> tuple[Path, Path]:
    """The tiny student without its weights, and with a tokenizer that has no chat template."""
    noweights, notemplate = tmp_path / "noweights", tmp_path / "notemplate"
    shutil.copytree(tiny_models["student"], noweights)
    (noweights / "model.safetensors").unlink()
    shutil.copytree(tiny_models["student"], notemplate)
    (notemplate / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((notemplate / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (notemplate / "tokenizer_config.json").write_text(json.dumps(config))
    return noweights, notemplate


def read_only_dir(tmp_path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro if not os.access(ro, os.W_OK) else Path("/sys")  # root writes through mode bits; /sys it cannot


def test_sft_bad_model_and_output_dirs_exit_2_before_any_work_and_the_fix_runs(tiny_models, ray_local, tmp_path, capsys):
    """Rows: a model dir with config.json but no weights; a tokenizer without a chat template;
    --output-dir a file or read-only; a failed start (8 workers on 2 CPUs) then the corrected command
    in the same directory; --resume on an empty or mistyped directory, and on a finished run."""
    noweights, notemplate = broken_copies(tiny_models, tmp_path)
    out, a_file = tmp_path / "run", tmp_path / "a_file"
    a_file.write_text("not a directory")
    small = write_mixture(tmp_path, [GOOD] * 64)  # the data work a failed start repeats, kept small

    def sft(output_dir, *extra):
        return cli(capsys, "sft", "--config", TINY_SFT, "--output-dir", str(output_dir), "logging.progress_bar=false",
                   "logging.tensorboard=false", "trainer.max_steps=2", f"data.mixture={small}", *extra)

    refused = {
        "no weights": (sft(out, f"model.path={noweights}"),
                       rf"model\.path: {noweights} has no weights \(expected one of model\.safetensors"),
        "no chat template": (sft(out, f"model.path={notemplate}"), rf"model\.path: the tokenizer of {notemplate} has no chat template"),
        "output dir a file": (sft(a_file), rf"output directory {a_file} is a file, not a directory"),
        "read-only output dir": (sft(read_only_dir(tmp_path)), r"output directory .* is not writable \(Permission denied\)"),
        "--resume, empty dir": (sft(tmp_path, "--resume"), rf"--resume: nothing to resume: {tmp_path} holds no complete checkpoint"),
        "--resume, mistyped": (sft(tmp_path / "rnu", "--resume"), rf"--resume: nothing to resume: {tmp_path}/rnu does not exist"),
    }
    for case, ((status, text), message) in refused.items():
        assert status == 2 and re.search(message, text), (case, text)
        assert "[sft] data:" not in text, case  # refused before the data is read
    assert not (tmp_path / "rnu").exists()

    status, text = sft(out, "trainer.num_workers=8")  # a start that fails after Ray is up, leaving files behind
    assert status == 2 and "trainer: requested 8 workers" in text, text
    assert (out / "config.yaml").exists() and not (out / "final").exists()

    status, text = sft(out, f"model.path={tiny_models['student']}")  # the corrected command: not blocked
    assert status == 0 and (out / "final" / "model.safetensors").exists(), text
    exported = (out / "final" / "model.safetensors").stat().st_mtime_ns
    status, text = sft(out, f"model.path={tiny_models['student']}", "--resume")
    assert status == 0 and f"[sft] run complete: {out} finished all 2 steps" in text, text
    assert "[sft] data:" not in text and (out / "final" / "model.safetensors").stat().st_mtime_ns == exported


def test_a_teacher_step_count_that_is_not_a_number_is_named(capsys):
    status, text = cli(capsys, "opd", "--config", TINY_OPD, "--teacher", "models/tiny/teacher-moe:abc")
    assert status == 2 and "--teacher models/tiny/teacher-moe:abc: the step count 'abc' is not a whole number" in text


def test_the_mixture_seed_decides_the_data(tmp_path, tokenizer):
    """As data_mixtures/README.md says: the mixture file's seed (not trainer.seed) decides the rows of an epoch."""
    import yaml

    from posttrain.config import DataConfig
    from posttrain.data.sft import SFTData

    spec = yaml.safe_load((ROOT / "data_mixtures/sft_tiny.yaml").read_text())
    for source in spec["sources"]:
        source["path"] = str((ROOT / "data_mixtures" / source["path"]).resolve())
    sizes = {}
    for seed in (0, 7):
        (tmp_path / f"mix{seed}.yaml").write_text(yaml.safe_dump({**spec, "seed": seed}))
        sizes[seed] = SFTData(DataConfig(mixture=str(tmp_path / f"mix{seed}.yaml"), max_seq_len=256), tokenizer).report.examples
    assert sizes == {0: 5120, 7: 5102}  # all_exhausted interleaving: the seed decides how long an epoch is


def test_the_opd_default_student_follows_where_sft_wrote(tmp_path, monkeypatch, capsys):
    """SFT moves to runs/sft-1 when runs/sft holds a run; OPD's default student (runs/sft/final) follows."""
    from posttrain.cli import build_parser
    from posttrain.stages.args import stage_config

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / TINY_OPD, tmp_path / "opd.yaml")
    for run in ("runs/sft", "runs/sft-1"):
        (tmp_path / run / "final").mkdir(parents=True)
        time.sleep(0.01)  # sft-1's export is the newer
    args, _ = build_parser().parse_known_args(["opd", "--config", "opd.yaml"])
    assert stage_config("opd", args).model.path == "runs/sft-1/final"
    assert "student: runs/sft-1/final, the newest SFT export" in capsys.readouterr().out
    args, _ = build_parser().parse_known_args(["opd", "--config", "opd.yaml", "--student", "runs/sft/final"])
    assert stage_config("opd", args).model.path == "runs/sft/final"  # named: kept


def test_sft_stops_cleanly_on_kill_sigint_sigterm_and_a_second_ctrl_c_and_resumes_exactly(tiny_models, sft_straight,
                                                                                          sft_fault_run, tmp_path, capsys,
                                                                                          monkeypatch):
    """Rows: SIGKILL of the driver mid-checkpoint (no Ray process, agents included, outlives it; the
    half-written checkpoint is not taken for one); Ctrl-C (SIGINT to
    the process group, as a terminal sends it) and SIGTERM (to the driver, as `timeout` and schedulers
    send it) each finish the step, checkpoint, print the resume command as the last line and exit
    130 / 143, even with Ray's raylet warning of a full disk every 10 s; a second Ctrl-C stops at once.
    The run then ends on the uninterrupted run's weights."""
    # Every disk is "full" past 1%: the runs' raylets print their warning every 10 s, as on a nearly full machine.
    monkeypatch.setenv("RAY_local_fs_capacity_threshold", "0.01")
    out = tmp_path / "run"
    args = ["sft", "--config", TINY_SFT, "--output-dir", str(out), f"model.path={tiny_models['student']}",
            "logging.progress_bar=false", *sft_fault_run]
    # SIGKILL while checkpoint 4 is half written (checkpoint 2 whole): nothing half-written is taken for a checkpoint.
    killed = run_cli(args, fault="kill_during_checkpoint_write:4", leftover_s=10)
    assert killed.returncode == -9 and (out / "checkpoints" / "latest").read_text() == "step_00000002"
    assert (out / "checkpoints" / ".incomplete-step_00000004").is_dir() and not (out / "final").exists()
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]  # logged, then killed before the commit

    for signum, status, step in ((signal.SIGINT, 130, 3), (signal.SIGTERM, 143, 4)):
        # The run waits after that step until the signal has come: however late a loaded machine sends it, the
        # run stops after exactly that step (a race CI lost: the signal came a step late).
        stopped = run_cli([*args, "--resume"], fault=f"pause_after_step:{step}",
                          then=signal_when(f"[fault] pause_after_step:{step}", signum, group=signum == signal.SIGINT))
        name = signal.Signals(signum).name
        assert stopped.returncode == status, stopped.stderr[-3000:]
        assert f"posttrain sft: stopped by {name} after step {step}; checkpoint {out}/checkpoints/step_0000000{step} " \
               f"written. Continue with:\n  posttrain sft --config {TINY_SFT} --output-dir {out}" in stopped.stderr
        assert "file_system_monitor" in stopped.stderr  # the warning came, and before the last line:
        assert stopped.stderr.rstrip().endswith("--resume") and "Traceback" not in stopped.stderr + stopped.stdout
        assert (out / "checkpoints" / "latest").read_text() == f"step_0000000{step}"

    # Step 5 stalls (a slow step), so the second Ctrl-C lands inside it however fast the machine is.
    at_once = run_cli([*args, "--resume"], fault="stall_after_step:5",
                      then=signal_when("[sft] resumed from", signal.SIGINT, signal.SIGINT, group=True))
    assert at_once.returncode == 130 and "posttrain sft: stopped at once by SIGINT; --resume continues from step 4" in \
        at_once.stderr, at_once.stderr[-3000:]
    assert "Traceback" not in at_once.stderr + at_once.stdout
    assert cli(capsys, *args, "--resume")[0] == 0
    assert not (out / "checkpoints" / ".incomplete-step_00000004").exists()
    assert same_weights(sft_straight, out)
    assert [r["loss"] for r in records(out)] == [r["loss"] for r in records(sft_straight)]


@pytest.mark.slow  # four OPD processes, ~3 min: CI's slow step; the SFT test above covers the same stop path by default
def test_opd_stops_cleanly_on_sigint_and_sigterm_and_resumes_exactly(tiny_models, undisturbed, tmp_path, capsys):
    """Rows: `--teacher PATH:abc` refused, the corrected command runs; Ctrl-C and SIGTERM during OPD
    finish the step, checkpoint and exit; SIGKILL mid-checkpoint loses only the half-written one;
    resumed, the run ends on the undisturbed run's weights, prompts and losses."""
    out = tmp_path / "opd"
    args = ["opd", "--config", TINY_OPD, "--output-dir", str(out), "--student", str(tiny_models["student"]),
            "--teacher", f"{tiny_models['teacher-moe']}:2", "--teacher", f"{tiny_models['teacher-next']}:3",
            "logging.progress_bar=false", "logging.tensorboard=false", *FAULT_RUN]
    status, text = cli(capsys, *[a.replace(":2", ":abc") for a in args])
    assert status == 2 and "the step count 'abc' is not a whole number" in text

    first = run_cli(args, fault="pause_after_step:1", then=signal_when("[fault] pause_after_step:1", signal.SIGINT, group=True))
    assert first.returncode == 130 and f"stopped by SIGINT after step 1; checkpoint {out}/checkpoints/step_00000001" \
        in first.stderr, first.stderr[-3000:]
    second = run_cli([*args, "--resume"], fault="pause_after_step:2", then=signal_when("[fault] pause_after_step:2", signal.SIGTERM))
    assert second.returncode == 143 and "stopped by SIGTERM after step 2" in second.stderr, second.stderr[-3000:]
    assert "Traceback" not in first.stderr + second.stderr
    # SIGKILL while the last checkpoint (step 5) is half written: --resume goes on from step 3 (second teacher).
    killed = run_cli([*args, "--resume"], fault="kill_during_checkpoint_write:5")
    assert killed.returncode == -9 and (out / "checkpoints" / "latest").read_text() == "step_00000003", killed.stderr[-2000:]
    assert cli(capsys, *args, "--resume")[0] == 0
    assert same_weights(undisturbed, out)
    assert prompt_ids(out) == prompt_ids(undisturbed)
    assert [r["reverse_kl"] for r in records(out)] == [r["reverse_kl"] for r in records(undisturbed)]


# --------------------------------------------------------------------------------------------------
# A run is one thing: the resume contract, one writer per directory, corrupt weights, data that cannot load
# --------------------------------------------------------------------------------------------------


def test_resume_refuses_what_would_change_the_run_and_takes_what_may_change(tiny_models, ray_local, tmp_path, capsys):
    """Rows: --resume with another lr, another mixture, a data file edited in place: exit 2 naming each key with its
    recorded and new value, nothing written. Allowed changes (max_steps to extend, checkpoint cadence) run and are
    recorded with the step they apply from; --accept-change takes a refused one on purpose, recorded the same way."""
    out, data = tmp_path / "run", tmp_path / "data"
    small = small_sft_mixture(data)

    def sft(*extra):
        return cli(capsys, "sft", "--config", TINY_SFT, "--output-dir", str(out), f"model.path={tiny_models['student']}",
                   "logging.progress_bar=false", "logging.tensorboard=false", f"data.mixture={small}",
                   "trainer.max_steps=2", *extra)

    assert sft()[0] == 0
    config_before, metrics_before = (out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()
    (tmp_path / "other").mkdir()
    other = write_mixture(tmp_path / "other", [GOOD] * 8)
    refused = {
        "another lr": (sft("--resume", "optim.lr=0.01"), r"optim\.lr: 0\.003 -> 0\.01"),
        "another mixture": (sft("--resume", f"data.mixture={other}"), rf"data\.mixture: \".*sft_small\.yaml\" -> \"{other}\""),
    }
    (data / "sft_small.jsonl").write_text((data / "sft_small.jsonl").read_text().replace("a", "b", 1))
    refused["a data file edited"] = (sft("--resume"), r"data file .*sft_small\.jsonl: \"[0-9a-f]+\" -> \"[0-9a-f]+\"")
    for case, ((status, text), message) in refused.items():
        assert status == 2 and re.search(message, text), (case, text)
        assert "--resume would change what the run in" in text and "--accept-change KEY" in text, case
        assert (out / "config.yaml").read_text() == config_before, case  # the record stays true
        assert (out / "metrics.jsonl").read_text() == metrics_before, case
    (data / "sft_small.jsonl").write_text((data / "sft_small.jsonl").read_text().replace("b", "a", 1))

    status, text = sft("--resume", "trainer.max_steps=3", "checkpoint.every=1")  # may change: extend, checkpoint cadence
    assert status == 0 and "resume changes trainer.max_steps: 2 -> 3 from step 3" in text, text
    assert [r["step"] for r in records(out)] == [1, 2, 3] and "max_steps: 3" in (out / "config.yaml").read_text()
    status, text = sft("--resume", "trainer.max_steps=4", "checkpoint.every=1", "optim.lr=0.0005", "--accept-change",
                       "optim.lr")
    assert status == 0 and "optim.lr: 0.003 -> 0.0005 from step 4 (accepted)" in text, text
    changes = [json.loads(line) for line in (out / "config_changes.jsonl").read_text().splitlines()]
    assert [(c["key"], c["from_step"], c["accepted"]) for c in changes] == [
        ("trainer.max_steps", 3, False), ("checkpoint.every", 3, False), ("optim.lr", 4, True),
        ("trainer.max_steps", 4, False)]
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4] and not (out / ".posttrain.lock").exists()


def test_opd_resume_with_another_cascade_or_loss_is_refused(tiny_models, tmp_path, capsys):
    from posttrain.stages.contract import check_resume

    out = hold_a_run(tmp_path / "opd")
    args = ["opd", "--config", TINY_OPD, "--output-dir", str(out), "--student", str(tiny_models["student"]),
            "--teacher", f"{tiny_models['teacher-moe']}:2", "logging.progress_bar=false"]
    from posttrain.cli import build_parser
    from posttrain.stages.args import stage_config

    check_resume(out, stage_config("opd", build_parser().parse_args(args), pick_free_dir=False), resume=False, from_step=1)
    status, text = cli(capsys, *args[:-3], "--teacher", f"{tiny_models['teacher-next']}:3", "loss.mode=sampled",
                       "logging.progress_bar=false", "--resume")
    assert status == 2, text
    assert re.search(r"teachers: .*teacher-moe.*\"steps\": 2.* -> .*teacher-next.*\"steps\": 3", text), text
    assert 'loss.mode: "topk_jsd" -> "sampled"' in text and not (out / "metrics.jsonl").exists()


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_holder(tiny_models, tmp_path, capsys):
    import socket
    import subprocess

    import psutil

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".posttrain.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                         "started": psutil.Process(holder.pid).create_time(),
                                                         "command": "posttrain sft --config"}))
        status, text = cli(capsys, "sft", "--config", TINY_SFT, "--output-dir", str(out),
                           f"model.path={tiny_models['student']}", "trainer.max_steps=1")
        assert status == 2 and f"{out} is in use by another run: pid {holder.pid} on {socket.gethostname()}" in text, text
        assert "[sft] data:" not in text and sorted(p.name for p in out.iterdir()) == [".posttrain.lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (a crash: nothing released the lock): the next run takes it over, says so, and releases it.
    from posttrain.infra import run_lock

    run_lock.acquire(out)  # as this process, which then "dies" without releasing it: forge a dead holder
    lock = json.loads((out / ".posttrain.lock").read_text())
    (out / ".posttrain.lock").write_text(json.dumps({**lock, "pid": holder.pid}))
    from posttrain.stages.driver import prepare_output_dir

    prepare_output_dir(out, resume=False, overwrite=False)
    assert f"the run that held it (pid {holder.pid}) is gone; taking it over" in capsys.readouterr().out
    run_lock.release(out / ".posttrain.lock")
    assert not (out / ".posttrain.lock").exists()


@pytest.mark.parametrize("who", ["student", "teacher"])
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_corrupt_weights_file_is_named_before_any_work(tiny_models, tmp_path, capsys, who, damage):
    broken = tmp_path / who
    shutil.copytree(tiny_models["student" if who == "student" else "teacher-moe"], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    out = tmp_path / "run"
    if who == "student":
        argv = ["sft", "--config", TINY_SFT, "--output-dir", str(out), f"model.path={broken}"]
    else:
        argv = ["opd", "--config", TINY_OPD, "--output-dir", str(out), "--student", str(tiny_models["student"]),
                "--teacher", f"{broken}:2"]
    status, text = cli(capsys, *argv)
    field = "model.path" if who == "student" else r"teachers\[0\]"
    assert status == 2 and re.search(rf"{field}: {weights}: .*(too short|cut short)", text), text
    assert "[sft] data:" not in text and "[opd] prompts:" not in text  # before the data, a model or Ray
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_data_that_cannot_load_exits_2_naming_the_source(tiny_models, tmp_path, capsys, monkeypatch):
    """Rows: a hub source with no hub access (every marco_mini mixture offline), a corrupt parquet, a key given twice
    in a mixture: exit 2 naming the source and what to do, before Ray or a worker; and a prompt given as chat
    messages (DAPO-Math-17k's layout) is a conversation, not an error."""
    monkeypatch.delenv("POSTTRAIN_HUB_MIRROR", raising=False)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    cases = {
        "hub offline": ("  - {name: hubbed, hub: org/not-mirrored, format: messages, weight: 1}\n",
                        r"hub:org/not-mirrored\[train\]: source 'hubbed': cannot load .*POSTTRAIN_HUB_MIRROR/org/not-mirrored"),
        "corrupt parquet": ("  - {name: broken, path: bad.parquet, format: messages, weight: 1}\n",
                            r"bad\.parquet: source 'broken': cannot read it as parquet"),
        "duplicate key": ("  - name: twice\n    path: bad.parquet\n    format: messages\n    weight: 1\n    weight: 2\n",
                          r"mix\.yaml: key 'weight' is given twice: line 6 and line 7"),
    }
    for case, (source, message) in cases.items():
        (tmp_path / "mix.yaml").write_text(f"name: m\nsources:\n{source}")
        out = tmp_path / case.replace(" ", "_")
        status, text = cli(capsys, "sft", "--config", TINY_SFT, "--output-dir", str(out), f"data.mixture={tmp_path / 'mix.yaml'}",
                           f"model.path={tiny_models['student']}")
        assert status == 2 and re.search(message, text), (case, text)
        assert "Traceback" not in text and not (out / "metrics.jsonl").exists(), case
    spec = write_mixture(tmp_path, [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5"}], fmt="prompt")
    assert read_all(spec)[0]["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]


def test_small_command_line_mistakes_exit_2_with_what_is_wrong(tmp_path, capsys):
    """Rows: eval --limit -5 / 0; --teacher P:-3; a config key given twice; a killed run's cut-short metrics line."""
    for limit in ("-5", "0"):
        status, text = cli(capsys, "eval", "--model", "none", "--limit", limit)
        assert status == 2 and f"--limit must be a whole number >= 1, got {limit}" in text, text
    status, text = cli(capsys, "opd", "--config", TINY_OPD, "--teacher", "models/tiny/teacher-moe:-3")
    assert status == 2 and "--teacher models/tiny/teacher-moe:-3: the step count must be > 0, got -3" in text, text
    (tmp_path / "c.yaml").write_text("model:\n  path: m\ndata:\n  mixture: x.yaml\noptim:\n  lr: 1.0e-3\n  lr: 1.0e-2\n")
    status, text = cli(capsys, "sft", "--config", str(tmp_path / "c.yaml"))
    assert status == 2 and "c.yaml: key 'lr' is given twice: line 6 and line 7" in text, text
    run = tmp_path / "killed"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"step": 2, "loss": 1.5})
                                       + "\n" + '{"step": 3, "lo')
    status, text = cli(capsys, "report", str(run))
    assert status == 0 and "the last line is cut short (a run stopped while writing it); reading the 2 whole steps" in text


def test_a_teacher_with_the_same_tokens_under_other_ids_is_refused_saying_which(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from posttrain.stages.opd.checks import vocabulary_difference

    vocab = AutoTokenizer.from_pretrained(tiny_models["student"]).get_vocab()
    a, b = sorted(vocab, key=vocab.get)[300:302]
    swapped = {**vocab, a: vocab[b], b: vocab[a]}
    said = vocabulary_difference(swapped, vocab)
    assert said.startswith(": the same tokens under other ids (2 differ:") and f"{a!r} is {vocab[b]} in the teacher" in said


def test_two_stop_signals_that_python_would_run_as_one_handler_still_stop_at_once():
    """Row: two Ctrl-C 0.3 s apart while the driver is in C code (Ray's ray.get; here a long pbkdf2, which checks no
    signal) reach Python as one handler call; the wakeup fd's byte per delivery counts two: stopped at once."""
    import hashlib
    import threading

    from posttrain.infra.stopping import StopNow, StopSignals

    started = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 50_000)
    rounds = int(50_000 * 2.0 / (time.perf_counter() - started))  # ~2 s of C
    with StopSignals("test") as stop:
        def two_ctrl_c():
            time.sleep(0.4)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=two_ctrl_c).start()
        with pytest.raises(StopNow):
            hashlib.pbkdf2_hmac("sha256", b"x", b"y", rounds)
            time.sleep(1.0)  # (a handler that took them as one would return here, and the step would go on)
        assert stop.signum == signal.SIGINT


def test_plan_refuses_an_allocation_it_cannot_split_and_fails_a_plan_that_does_not_fit(capsys):
    """Rows: `posttrain plan --gpus 3` with the card's tensor-parallel-4 teacher, `--gpus 0`, and a plan that does
    not fit (the exit status a script checks). The splits themselves: tests/planning/test_plan.py."""
    opd = "configs/marco_mini/opd.yaml"
    status, text = cli(capsys, "plan", "--config", opd, "--gpus", "3")
    assert status == 2 and "--gpus 3: the teacher group gets 1 GPU(s), fewer than one engine's tensor parallel size" in text
    status, text = cli(capsys, "plan", "--config", opd, "--gpus", "0")
    assert status == 2 and "--gpus must be >= 1, got 0" in text
    status, text = cli(capsys, "plan", "--config", opd, "--gpus", "64", "--gpu", "a100-40g")
    assert status == 1 and "does NOT fit" in text
    status, text = cli(capsys, "plan", "--config", opd, "--gpus", "7", "teacher.gpus_per_worker=1")
    assert status in (0, 1) and "on 7 x H100 SXM 80GB (trainer 4, rollout 2, teacher 1 GPUs)" in text
