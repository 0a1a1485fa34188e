"""The OPD stage end to end on the tiny suite: rollout, teacher and trainer groups on a real Ray."""

import json
import shutil

import pytest
import ray
import torch
from safetensors.torch import load_file

from posttrain.config import OPDConfig, TeacherStage, load_config
from posttrain.opd.checks import VocabularyMismatch
from posttrain.opd.loop import cascade_position, run_opd

TINY = "configs/tiny/opd.yaml"


def config(tiny_models, out, stages=(6, 6), *overrides, student=None):
    cfg = load_config(OPDConfig, TINY, [f"model.path={student or tiny_models['student']}", f"output_dir={out}",
                                        "logging.progress_bar=false", "logging.tensorboard=false", *overrides])
    cfg.teachers = [TeacherStage(str(tiny_models["teacher-moe"]), stages[0]),
                    TeacherStage(str(tiny_models["teacher-next"]), stages[1])][:len(stages)]
    return cfg


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cascade_position():
    stages = [TeacherStage("a", 3), TeacherStage("b", 2)]
    assert [cascade_position(stages, s) for s in range(1, 6)] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]


def test_a_teacher_with_another_vocabulary_is_refused_before_any_rollout(tiny_models, tmp_path):
    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_models["teacher-moe"], other)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|not_in_the_student|>"])
    tokenizer.save_pretrained(other)
    cfg = config(tiny_models, tmp_path / "run")
    cfg.teachers = [TeacherStage(str(other), 2)]
    with pytest.raises(VocabularyMismatch, match=rf"teacher {other} has a vocabulary of \d+ tokens .*"
                                                 rf"the student {tiny_models['student']} has \d+ tokens"):
        run_opd(cfg)
    assert not ray.is_initialized() or not (tmp_path / "run" / "metrics.jsonl").exists()


def test_opd_cascade_lowers_the_reverse_kl_in_each_stage(tiny_models, sft_run, tmp_path):
    """The shipped tiny config, from the SFT'd student as in the demo: each stage moves it to its teacher."""
    out = tmp_path / "opd"
    cfg = config(tiny_models, out, student=sft_run / "final")
    steps = [stage.steps for stage in load_config(OPDConfig, TINY).teachers]
    cfg.teachers = [TeacherStage(stage.path, n) for stage, n in zip(cfg.teachers, steps)]
    run_opd(cfg)
    rows = records(out)
    assert [r["stage"] for r in rows] == [1] * steps[0] + [2] * steps[1]
    assert rows[0]["teacher"].endswith("teacher-moe") and rows[-1]["teacher"].endswith("teacher-next")
    for stage in (1, 2):
        kl = [r["reverse_kl"] for r in rows if r["stage"] == stage]
        assert sum(kl[-5:]) / 5 < sum(kl[:5]) / 5, kl
    for key in ("loss", "response_len", "rollout_s", "teacher_s", "train_s", "sync_s", "tokens_per_s", "truncated_frac",
                "eval/addition", "eval/repeat", "expert_imbalance"):
        assert key in rows[-1]
    assert [r["step"] for r in rows if "eval/addition" in r] == list(range(10, len(rows) + 1, 10))

    # posttrain report: the plots and the page, from this run's metrics.
    from posttrain.cli import main

    assert main(["report", str(out)]) == 0
    for name in ("loss.png", "reverse_kl.png", "eval.png", "tokens_per_s.png", "time_split.png", "expert_load.png"):
        assert (out / "report" / name).stat().st_size > 1000
    page = (out / "report.md").read_text()
    assert "![reverse_kl.png](report/reverse_kl.png)" in page and "teacher-next" in page


def test_resume_in_the_second_stage_gives_the_uninterrupted_weights(tiny_models, ray_local, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_opd(config(tiny_models, straight, (2, 3)))
    run_opd(config(tiny_models, resumed, (2, 3), "trainer.stop_after_step=4"))
    run_opd(config(tiny_models, resumed, (2, 3)), resume=True)
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["reverse_kl"] for r in records(straight)] == [r["reverse_kl"] for r in records(resumed)]


def test_rollout_weights_equal_the_trainers_after_a_sync(tiny_models, ray_local):
    from posttrain.config import OptimConfig, RolloutConfig
    from posttrain.data.packing import pack
    from posttrain.opd.rollout import RolloutGroup
    from posttrain.train.group import TrainerGroup

    cfg = config(tiny_models, "unused")
    trainer = TrainerGroup(cfg.model, cfg.trainer, OptimConfig(lr=1e-2, schedule="constant"), cfg.deepspeed, 1, pad_id=0)
    rollout = RolloutGroup(cfg.model.path, RolloutConfig(sync_bucket_mb=1))
    try:
        ids = list(range(10, 40))
        extras = {"sampler_logprobs": torch.full((30,), -3.0), "teacher_logprobs": torch.full((30,), -1.0)}
        trainer.train_step(pack([(ids, [0] * 10 + [1] * 20, extras)], 256), "opd")
        refs = trainer.weight_buckets(1)
        assert len(refs) > 1  # several buckets, not one tensor per call nor one blob
        rollout.update_weights(refs)
        trained = trainer._all("full_state_dict")[0]
        served = ray.get(rollout.workers[0].state_dict.remote())
        assert any(not torch.equal(trained[k], load_file(f"{cfg.model.path}/model.safetensors")[k])
                   for k in trained if k in load_file(f"{cfg.model.path}/model.safetensors"))
        assert all(torch.equal(trained[k], served[k]) for k in trained)
    finally:
        rollout.shutdown()
        trainer.shutdown()
