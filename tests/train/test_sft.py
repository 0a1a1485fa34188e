"""The SFT stage end to end on the tiny suite: real Ray actors, real DeepSpeed engines (gloo, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.config import SFTConfig, load_config
from posttrain.sft import RunDirError, run_sft

TINY = "configs/tiny/sft.yaml"


def config(tiny_models, out, *overrides):
    return load_config(SFTConfig, TINY, [f"model.path={tiny_models['student']}", f"output_dir={out}",
                                         "logging.progress_bar=false", *overrides])


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


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


@pytest.mark.parametrize("zero_stage", [2, 3])
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


def test_resume_after_a_stop_gives_the_uninterrupted_weights(tiny_models, ray_local, tmp_path):
    common = ("trainer.max_steps=6", "checkpoint.every=2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_sft(config(tiny_models, straight, *common))
    run_sft(config(tiny_models, resumed, *common, "trainer.stop_after_step=3"))
    assert not (resumed / "final").exists()
    run_sft(config(tiny_models, resumed, *common), resume=True)
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in records(straight)] == [r["loss"] for r in records(resumed)]


def test_an_output_dir_holding_a_run_is_refused(tiny_models, ray_local, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        run_sft(config(tiny_models, out))
