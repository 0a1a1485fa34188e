"""The benchmarks that CI runs in their CPU modes: the GPU check's smoke run and the loss-memory measurement
at a toy size (each measurement in its own process, as the real run does)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def run_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_gpu_check_smoke_runs_and_names_what_needs_a_gpu():
    out = run_script("benchmarks/gpu_check.py", "--smoke")
    assert "SMOKE (CPU, toy sizes)" in out and "Needs a GPU: tokens/s and MFU" in out
    assert "| eager | " in out and "| sdpa_packed | " in out and "| sdpa | " in out
    assert "| 1,024 | " in out  # the loss table's second row


def test_loss_memory_measures_both_arms_and_projects_what_it_skips():
    out = run_script("benchmarks/loss_memory.py", "--tokens", "512", "4096", "--fit-tokens", "256",
                     "--vocab", "4096", "--hidden", "64", "--chunk", "128", "--before-limit-gb", "0.1")
    assert "| 512 | " in out and "(projected)" in out and "linear fit" in out
    assert "bytes per logit of one chunk" in out
