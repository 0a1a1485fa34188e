"""The SFT stage end to end on the tiny suite: real Ray actors, real DeepSpeed engines (gloo, CPU)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.stages.driver import RunDirError
from posttrain.stages.sft import run_sft
from tests.helpers import hold_a_run, records, sft_config as config


def test_tiny_sft_learns_and_exports_an_hf_model(sft_run):
    out, final = sft_run, sft_run / "final"
    rows = records(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last <= 0.7 * first, (first, last)
    for key in ("lr", "tokens", "tokens_per_s", "load_balancing_loss", "expert_imbalance"):
        assert key in rows[-1]
    assert len(rows[-1]["expert_imbalance"]) == 2  # one per layer
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert (final / "model.safetensors").exists() and (final / "generation_config.json").exists()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.parametrize("zero_stage", [2, pytest.param(3, marks=pytest.mark.slow)])  # ZeRO-3: test_worker's two ranks by default
def test_two_workers_give_the_single_worker_first_step(tiny_models, ray_local, tmp_path, zero_stage):
    one = tmp_path / "one"
    two = tmp_path / "two"
    run_sft(config(tiny_models, one, "trainer.max_steps=2", f"deepspeed.zero_stage={zero_stage}"))
    run_sft(config(tiny_models, two, "trainer.max_steps=2", "trainer.num_workers=2", f"deepspeed.zero_stage={zero_stage}"))
    a, b = records(one), records(two)
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-4
    assert b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-4)
    assert abs(a[1]["loss"] - b[1]["loss"]) < 1e-3  # after one update, still the same run
    # The ZeRO-3 export gathers the partitions: the model loads whole.
    AutoModelForCausalLM.from_pretrained(two / "final")


@pytest.mark.parametrize("zero_stage", [2, 0])  # ZeRO's own overflow check; stage 0's in posttrain.train.worker
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run_resumably(tiny_models, ray_local, tmp_path, monkeypatch,
                                                                        zero_stage):
    from posttrain.infra import checkpoint, faults
    from posttrain.stages.driver import NonFiniteError

    out = tmp_path / "nan"
    common = ("trainer.max_steps=4", "checkpoint.every=1", "checkpoint.keep=4", "trainer.max_nonfinite_in_a_row=2",
              "logging.tensorboard=false", f"deepspeed.zero_stage={zero_stage}")
    monkeypatch.setenv(faults.ENV, "nan_loss:2,nan_loss:3")
    faults.reset()
    with pytest.raises(NonFiniteError, match=r"steps 2\.\.3 all had a non-finite loss or gradient and were skipped "
                                             r"\(trainer\.max_nonfinite_in_a_row=2\); stopped with checkpoint .*step_00000003"):
        run_sft(config(tiny_models, out, *common))
    rows = records(out)
    assert [(r["skipped"], r["skipped_steps"]) for r in rows] == [(False, 0), (True, 1), (True, 2)]
    assert rows[0]["lr"] < rows[1]["lr"] == rows[2]["lr"]  # warm-up: a skipped step does not advance the schedule
    # No update was applied by the skipped steps: the weights of step 3 are those of step 1.
    ckpts = out / "checkpoints"
    one = torch.load(ckpts / "step_00000001" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    three = torch.load(ckpts / "step_00000003" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.equal(one[k], three[k]) for k in one)
    assert checkpoint.verify(ckpts / "step_00000003") is None

    monkeypatch.delenv(faults.ENV)
    run_sft(config(tiny_models, out, *common), resume=True)
    final = load_file(out / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())
    assert [(r["step"], r["skipped"]) for r in records(out)][-1] == (4, False)


def test_a_dead_trainer_worker_stops_the_run_with_a_resumable_checkpoint(tiny_models, ray_local, tmp_path, monkeypatch):
    from posttrain.infra import checkpoint, faults
    from posttrain.infra.cluster import WorkerFailure

    out = tmp_path / "dead"
    common = ("trainer.max_steps=4", "checkpoint.every=2", "logging.tensorboard=false")
    # A preemption-style stop first (checkpoint at step 1), then a resumed run loses a rank in its
    # second train call (step 3), after checkpoint 2.
    assert run_sft(config(tiny_models, out, *common, "trainer.stop_after_step=1")).name == "step_00000001"
    monkeypatch.setenv(faults.ENV, "kill_trainer_worker:2")
    faults.reset()
    with pytest.raises(WorkerFailure, match=r"step 3: a trainer worker died during train_step .*--resume continues from "
                                            r"the last complete checkpoint .*step_00000002"):
        run_sft(config(tiny_models, out, *common), resume=True)
    assert checkpoint.verify(out / "checkpoints" / "step_00000002") is None
    assert [r["step"] for r in records(out)] == [1, 2]


def test_an_output_dir_holding_a_run_is_refused(tiny_models, ray_local, tmp_path):
    out = hold_a_run(tmp_path / "run")
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        run_sft(config(tiny_models, out))
