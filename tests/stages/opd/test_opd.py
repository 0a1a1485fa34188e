"""The OPD stage end to end on the tiny suite: rollout, teacher and trainer groups on a real Ray."""

import re
import shutil

import pytest
import ray
import torch
from safetensors.torch import load_file

from posttrain.config import OPDConfig, TeacherStage, load_config
from posttrain.stages.opd.loop import cascade_position, run_opd
from tests.helpers import FAULT_RUN, TINY_OPD as TINY, opd_config as config, prompt_ids, records, run_cli, same_weights

def test_cascade_position():
    stages = [TeacherStage("a", 3), TeacherStage("b", 2)]
    assert [cascade_position(stages, s) for s in range(1, 6)] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]


def test_a_teacher_with_another_vocabulary_is_refused_before_any_rollout(tiny_models, tmp_path):
    """Refused by the checks, before the output directory is made or Ray starts: the command names a Ray
    address where nothing listens, which only a run that got past the checks would try to reach."""
    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_models["teacher-moe"], other)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|not_in_the_student|>"])
    tokenizer.save_pretrained(other)
    out = tmp_path / "run"
    refused = run_cli(["opd", "--config", TINY, "--output-dir", str(out), "--student", str(tiny_models["student"]),
                       "--teacher", f"{other}:2", "--ray-address", "127.0.0.1:9", "logging.progress_bar=false"],
                      fault="", timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert re.search(rf"teacher {other} has a vocabulary of \d+ tokens .*the student {tiny_models['student']} has "
                     rf"\d+ tokens", refused.stderr), refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and not out.exists()


def test_opd_cascade_lowers_the_reverse_kl_in_each_stage(tiny_models, sft_run, tmp_path, capsys):
    """The shipped tiny config, from the SFT'd student as in the demo: each stage moves it to its teacher;
    the console says when the teacher changes, what each eval scored, each checkpoint saved, and the lr."""
    out = tmp_path / "opd"
    cfg = config(tiny_models, out, student=sft_run / "final")
    steps = [stage.steps for stage in load_config(OPDConfig, TINY).teachers]
    cfg.teachers = [TeacherStage(stage.path, n) for stage, n in zip(cfg.teachers, steps)]
    run_opd(cfg)
    baseline, *rows = records(out)
    assert baseline["step"] == 0 and "eval/addition" in baseline  # the student before any OPD step
    assert [r["stage"] for r in rows] == [1] * steps[0] + [2] * steps[1]
    # posttrain check's cheap subset on step 1's own samples, before they trained (issue 25): sampler vs trainer, static
    assert rows[0]["check/sampler_trainer_pass"] and rows[0]["check/static_pass"]
    assert rows[0]["check/sampler_trainer_mean_abs"] < 1e-4 and not any("check/sampler_trainer_pass" in r for r in rows[1:])
    assert rows[0]["teacher"].endswith("teacher-moe") and rows[-1]["teacher"].endswith("teacher-next")
    for stage in (1, 2):
        kl = [r["reverse_kl"] for r in rows if r["stage"] == stage]
        assert sum(kl[-5:]) / 5 < sum(kl[:5]) / 5, kl
    for key in ("loss", "response_len", "rollout_s", "teacher_s", "train_s", "sync_s", "tokens_per_s", "truncated_frac",
                "eval/addition", "expert_imbalance"):
        assert key in rows[-1]
    assert [r["step"] for r in rows if "eval/addition" in r] == list(range(10, len(rows) + 1, 10))
    console = capsys.readouterr().out
    assert f"[opd] teacher 1/2: {tiny_models['teacher-moe']}, steps 1-{steps[0]}\n" in console
    assert f"[opd] teacher 2/2: {tiny_models['teacher-next']}, steps {steps[0] + 1}-{sum(steps)} (the reverse KL is " \
           "measured against this teacher from here on)" in console
    assert re.search(r"\[opd\] eval at step 0: accuracy addition \d\.\d{3} \(", console), console
    assert re.search(rf"\[checkpoint\] step \d+ saved: {out}/checkpoints/step_\d+", console), console
    assert re.search(rf"step +{sum(steps)}/{sum(steps)} \|.* reverse_kl [^|]+ \| lr [^|]+ \|", console), console

    # posttrain report: the plots and the page, from this run's metrics.
    from posttrain.cli import main

    assert main(["report", str(out)]) == 0
    for name in ("loss.png", "reverse_kl.png", "eval.png", "optimizer.png", "tokens_per_s.png", "time_split.png",
                 "expert_load.png"):
        assert (out / "report" / name).stat().st_size > 1000
    page = (out / "report.md").read_text()
    assert "![reverse_kl.png](report/reverse_kl.png)" in page and "teacher-next" in page


@pytest.mark.slow  # long: CI's slow step (pytest -m slow); see README, Tests and CI
def test_killed_rollout_and_teacher_workers_are_restarted_and_nothing_is_lost(tiny_models, undisturbed, tmp_path,
                                                                              monkeypatch, capsys):
    """A rollout actor dies in step 2's generate, a teacher actor in step 4's scoring: Ray restarts
    them, the rollout worker gets the trainer's weights back, the calls are redone, and the run
    consumes exactly the undisturbed run's prompts and ends on its weights."""
    from posttrain.infra import faults

    out = tmp_path / "faults"
    monkeypatch.setenv(faults.ENV, "kill_rollout_worker:2,kill_teacher_worker:4")
    faults.reset()
    run_opd(config(tiny_models, out, (2, 3), *FAULT_RUN))
    printed = capsys.readouterr().out
    assert "[rollout] WARNING: worker 0 died" in printed and "[teacher] WARNING: worker 0 died" in printed
    assert prompt_ids(out) == prompt_ids(undisturbed)
    assert [len(r["prompt_ids"]) for r in prompt_ids(out)] == [8] * 5
    assert same_weights(undisturbed, out)


def test_a_worker_dying_past_its_restarts_stops_the_run_with_a_checkpoint(tiny_models, ray_local, tmp_path, monkeypatch):
    from posttrain.infra import checkpoint, faults
    from posttrain.infra.cluster import WorkerFailure

    out = tmp_path / "gone"
    monkeypatch.setenv(faults.ENV, "kill_rollout_worker:2")
    faults.reset()
    with pytest.raises(WorkerFailure, match=r"step 2: rollout worker 0 died .* more than rollout\.max_restarts=0; "
                                            r"--resume continues from the last complete checkpoint .*step_00000001"):
        run_opd(config(tiny_models, out, (2, 3), *FAULT_RUN, "rollout.max_restarts=0"))
    assert checkpoint.verify(out / "checkpoints" / "step_00000001") is None


def test_rollout_weights_equal_the_trainers_after_a_sync(tiny_models, ray_local):
    """Under ZeRO-3 (gathered module by module) the trainer streams its weights into the rollout worker
    in several buckets; the served weights are then the trainer's exactly."""
    from posttrain.config import OptimConfig, RolloutConfig
    from posttrain.data.packing import pack
    from posttrain.engines.group import RolloutGroup
    from posttrain.losses import LOSSES
    from posttrain.train.group import TrainerGroup

    cfg = config(tiny_models, "unused", (6, 6), "deepspeed.zero_stage=3")
    trainer = TrainerGroup(cfg.model, cfg.trainer, OptimConfig(lr=1e-2, schedule="constant"), cfg.deepspeed, 1, pad_id=0)
    rollout = RolloutGroup(cfg.model.path, RolloutConfig())
    rollout.sender = lambda workers, nodes: trainer.send_weights(workers, nodes, bucket_mb=1)
    try:
        ids = list(range(10, 40))
        extras = {"sampler_logprobs": torch.full((30,), -3.0), "advantages": torch.full((30,), 2.0)}  # ratio < 1 - clip: unclipped only where A > 0
        trainer.train_step(pack([(ids, [0] * 10 + [1] * 20, extras)], 256), LOSSES["sampled"], cfg.loss)
        stats = rollout.update_weights()
        trained = trainer._all("full_state_dict")[0]
        largest_tensor = max(t.numel() * t.element_size() for t in trained.values())
        # Several buckets, not one blob: each at most 1 MiB, or the one tensor that is larger alone.
        assert stats.buckets > 1 and stats.largest_bucket_bytes <= max(2**20, largest_tensor)
        served = ray.get(rollout.workers[0].state_dict.remote())
        initial = load_file(f"{cfg.model.path}/model.safetensors")
        assert any(not torch.equal(trained[k], initial[k]) for k in trained if k in initial)
        assert all(torch.equal(trained[k], served[k]) for k in trained)
    finally:
        rollout.close()
        trainer.close()
