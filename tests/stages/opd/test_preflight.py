"""`posttrain check` (issue 25): passes on the tiny run with either backend, and each check is proven able to
fail: a test breaks the one thing it guards and sees that check, and only that one, fail."""

import json

import pytest

from tests.helpers import TINY_OPD, require_vllm, run_cli

CHECKS = ("static", "sampler_vs_trainer", "teacher_replicas", "self_distillation", "after_sync")


def check(tiny_models, out, *overrides, fault: str = ""):
    args = ["check", "--config", TINY_OPD, f"model.path={tiny_models['student']}", f"output_dir={out}",
            f"teachers=[{{path: {tiny_models['teacher-moe']}, steps: 1}}]", *overrides]
    proc = run_cli(args, fault=fault, timeout=300)
    report = json.loads((out / "check.json").read_text()) if (out / "check.json").exists() else None
    return proc, report


def verdicts(report) -> dict:
    return {c["name"]: c["verdict"] for c in report["checks"]}


def test_the_tiny_run_passes_every_check_with_the_hf_backends(tiny_models, tmp_path):
    proc, report = check(tiny_models, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdicts(report) == dict.fromkeys(CHECKS, "pass")
    by_name = {c["name"]: c["measured"] for c in report["checks"]}
    assert by_name["sampler_vs_trainer"]["mean_abs"] < 1e-4 and by_name["sampler_vs_trainer"]["tokens"] > 0
    assert abs(by_name["self_distillation"]["reverse_kl"]) < 1e-4
    assert by_name["after_sync"]["perturbation_moved"] > 1e-2  # the sync check is not vacuous
    assert "| sampler_vs_trainer |" in proc.stdout and report["seconds"] < 120


def test_the_tiny_run_passes_every_check_with_vllm_engines(tiny_models, tmp_path):
    require_vllm()
    proc, report = check(tiny_models, tmp_path, "rollout.backend=vllm", "teacher.backend=vllm")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdicts(report) == dict.fromkeys(CHECKS, "pass")
    replicas = next(c for c in report["checks"] if c["name"] == "teacher_replicas")["measured"]
    assert replicas["worst"] == "backend hf"  # vLLM's teacher against transformers' on the same tokens


BREAKS = {
    # what is broken (the fault, and overrides) -> the one check that must fail
    "a teacher that scores with a one-token offset": ("shift_teacher_input:1", (), "self_distillation"),
    "a sampler at another temperature": ("sampler_temperature:1", (), "sampler_vs_trainer"),
    "a teacher replica with perturbed weights": ("perturb_teacher_replica:1", ("teacher.num_workers=2", "teacher.cpus_per_worker=0.25"), "teacher_replicas"),
    "a rollout engine left on its old weights": ("stale_rollout:1", (), "after_sync"),
}


@pytest.mark.slow  # four runs of the check: CI's slow step
@pytest.mark.parametrize("broken", BREAKS)
def test_each_check_fails_when_what_it_guards_is_broken_and_only_that_one(tiny_models, tmp_path, broken):
    fault, overrides, guarding = BREAKS[broken]
    proc, report = check(tiny_models, tmp_path, *overrides, fault=fault)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert verdicts(report) == {name: "FAIL" if name == guarding else "pass" for name in CHECKS}
    assert f"{guarding} failed:" in proc.stdout  # and what it usually means


def test_a_template_the_student_does_not_share_fails_the_static_check(tiny_models, tmp_path):
    """Check 5: the static checks, in the same table; the groups are not started when it fails."""
    foreign = tmp_path / "foreign"
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tiny_models["teacher-moe"], foreign)
    tokenizer = AutoTokenizer.from_pretrained(foreign)
    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    tokenizer.save_pretrained(foreign)
    out = tmp_path / "out"
    proc = run_cli(["check", "--config", TINY_OPD, f"model.path={tiny_models['student']}", f"output_dir={out}",
                    f"teachers=[{{path: {foreign}, steps: 1}}]"], timeout=120)
    report = json.loads((out / "check.json").read_text())
    assert proc.returncode == 1
    assert verdicts(report) == {"static": "FAIL", **dict.fromkeys(CHECKS[1:], "not run")}
    assert "chat template" in proc.stdout
