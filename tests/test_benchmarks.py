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


def test_the_quality_pages_verdicts_are_computed_from_the_results():
    """docs/distillation_quality.md's targets, best mode and run-to-run noise, from a summary of made-up numbers."""
    from benchmarks.distill_findings import findings

    def result(addition, chain):
        return {"tasks": {"addition": {"accuracy": addition}, "chain": {"accuracy": chain}}}

    def arm(addition, chain, *overrides):
        kind = "opd" if overrides else "seqkd"
        return {"eval": result(addition, chain), "spec": {"kind": kind, "overrides": list(overrides)},
                "run": {"steps": 200, "curve": []}}

    summary = {
        "tasks": ["addition", "chain"], "args": {"work_dir": "nowhere", "eval_limit": 200}, "recommended": "opd_forward",
        "flops_per_token": {"student_train": 3.0, "student_forward": 1.0, "teacher_forward": 3.0},
        "labels": {}, "variant_keys": ["v_forward_seed1"],
        "teacher": result(0.9, 0.8), "start": result(0.4, 0.2),
        "arms": {"seqkd": arm(0.85, 0.8), "opd_sampled": arm(0.3, 0.2, "loss.mode=sampled"),
                 "opd_forward": arm(0.9, 0.5, "loss.mode=topk_jsd"), "opd_reverse": arm(0.6, 0.4, "loss.mode=topk"),
                 "v_forward_seed1": arm(0.8, 0.56, "loss.mode=topk_jsd", "trainer.seed=1"),
                 "sft_truth": {**arm(0.95, 0.9), "spec": {"kind": "sft", "overrides": []}}},
    }
    page = findings(summary)
    assert "it closes -20%: **missed** by 70 points of the gap." in page
    assert "addition +100% vs +90%, chain +50% vs +100%: met." in page
    assert "Measured best: opd_forward (`loss.mode=topk_jsd`" in page and "it is the recommended mode" in page
    assert "the teacher here is 3.0x the student per token" in page
    assert "opd_forward: addition +100% → +80%, chain +50% → +60%" in page
    assert "moves by up to 20 points (mean 15)" in page
    assert "seqkd" not in page.split("**Run-to-run noise.**")[1]  # seqKD and SFT: no overrides, not seed twins
    assert "the best configuration by mean gap closed: opd_forward (addition +90%, chain +55%, the mean of 2 seeds)" in page
