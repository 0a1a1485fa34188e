"""The memory levers on real DeepSpeed engines (gloo, CPU): LoRA, activation checkpointing, ZeRO-Offload."""

import json

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import ConfigError, DeepSpeedConfig, LoRAConfig, OptimConfig, SFTConfig, TrainerConfig, load_config
from posttrain.data.packing import pack
from posttrain.losses import LOSSES
from posttrain.stages.sft import run_sft
from posttrain.train.group import TrainerGroup

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def batch(seed=0, n=3, length=40):
    """A few fixed sequences with a loss on their second half (the SFT objective)."""
    g = torch.Generator().manual_seed(seed)
    examples = [(torch.randint(10, 200, (length,), generator=g).tolist(), [0] * (length // 2) + [1] * (length - length // 2))
                for _ in range(n)]
    return pack(examples, 1024)


def first_losses(model, steps=2, lr=1e-2, **levers):
    """The SFT loss of `steps` optimizer steps on the same batch, with the given levers."""
    trainer = TrainerConfig(seed=0, cpus_per_worker=1, activation_checkpointing=levers.pop("checkpointing", False))
    ds = DeepSpeedConfig(**levers)
    group = TrainerGroup(model, trainer, OptimConfig(lr=lr, schedule="constant", weight_decay=0.1), ds, steps, pad_id=0)
    try:
        out = []
        for _ in range(steps):
            out.append(group.train_step(batch(), LOSSES["nll"]).loss)
        return out
    finally:
        group.close()


@pytest.mark.slow  # long: CI's slow step (pytest -m slow); see README, Tests and CI
def test_checkpointing_and_offload_give_the_baseline_steps(tiny_models, ray_local):
    from posttrain.config import ModelConfig

    model = ModelConfig(path=str(tiny_models["student"]))
    base = first_losses(model)
    assert base[1] < base[0]  # the step did something
    for levers in ({"checkpointing": True}, {"offload_optimizer": "cpu"}, {"zero_stage": 0},
                   {"zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"}):
        losses = first_losses(model, **levers)
        assert abs(losses[0] - base[0]) < 1e-4, (levers, losses, base)  # before any update
        assert abs(losses[1] - base[1]) < 1e-4, (levers, losses, base)  # after the same update


def test_lora_trains_only_the_adapters_and_syncs_merged_weights(tiny_models, ray_local):
    from posttrain.config import ModelConfig, RolloutConfig
    from posttrain.engines.group import RolloutGroup

    path = tiny_models["student"]
    original = loaded(path)
    lora = LoRAConfig(enabled=True, rank=4, alpha=8, target_parameters=["mlp.experts.down_proj"])
    trainer = TrainerGroup(ModelConfig(path=str(path)), TrainerConfig(cpus_per_worker=1, freeze_router=True),
                           OptimConfig(lr=1e-2, schedule="constant"), DeepSpeedConfig(), 2, pad_id=0, lora=lora)
    rollout = RolloutGroup(str(path), RolloutConfig(cpus_per_worker=0.5))
    rollout.sender = lambda workers, nodes: trainer.send_weights(workers, nodes, bucket_mb=1)
    try:
        assert 0 < trainer.trainable_params < trainer.num_params / 10
        for _ in range(2):
            trainer.train_step(batch(), LOSSES["nll"])
        raw = trainer._all("module_state_dict")[0]
        adapters = {k: v for k, v in raw.items() if ".lora_" in k}
        assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
        assert all(v.abs().sum() > 0 for k, v in adapters.items() if ".lora_B." in k)  # B starts at 0: it trained
        from posttrain.train.lora import base_name

        bases = {base_name(k): v for k, v in raw.items() if ".lora_" not in k}
        assert original.keys() <= bases.keys()
        assert all(torch.equal(bases[k], original[k]) for k in original), "a frozen base weight changed"

        merged = trainer._all("full_state_dict")[0]
        assert merged.keys() == bases.keys()
        scale = lora.alpha / lora.rank
        for key, tensor in merged.items():
            module = key.rsplit(".", 1)[0]
            if module.endswith(ATTENTION):  # an independent merge: W + (alpha / r) B A
                prefix = f"base_model.model.{module}"
                delta = scale * raw[f"{prefix}.lora_B.default.weight"] @ raw[f"{prefix}.lora_A.default.weight"]
                torch.testing.assert_close(tensor, bases[key] + delta, atol=1e-6, rtol=0)
                assert not torch.equal(tensor, bases[key])
            elif key.endswith("mlp.experts.down_proj"):
                assert not torch.equal(tensor, bases[key])  # the fused 3-D expert tensor is adapted too
            else:
                assert torch.equal(tensor, bases[key])

        rollout.update_weights()  # streamed: each adapted module merged as it is sent
        served = ray.get(rollout.workers[0].state_dict.remote())
        assert all(torch.equal(merged[k], served[k]) for k in merged)
    finally:
        rollout.close()
        trainer.close()


def loaded(path) -> dict:
    """A model's weights as transformers holds them (the 3-D expert tensors are fused on load)."""
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def sft_config(tiny_models, out, *overrides):
    return load_config(SFTConfig, "configs/tiny/sft.yaml", [
        f"model.path={tiny_models['student']}", f"output_dir={out}", "logging.progress_bar=false",
        "logging.tensorboard=false", "trainer.max_steps=3", "checkpoint.every=2", "lora.enabled=true", *overrides])


@pytest.mark.slow  # long: CI's slow step (pytest -m slow); see README, Tests and CI
def test_lora_sft_checkpoints_only_adapters_resumes_exactly_and_exports_merged(tiny_models, ray_local, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_sft(sft_config(tiny_models, straight))
    run_sft(sft_config(tiny_models, resumed, "trainer.stop_after_step=2"))
    run_sft(sft_config(tiny_models, resumed), resume=True)

    # The checkpoint's module file holds the adapters only; the base is model.path. (DeepSpeed drops
    # the frozen tensors named by named_parameters(), which lists a tied weight once, under
    # embed_tokens: the tied lm_head alias stays.)
    (module_file,) = (straight / "checkpoints" / "step_00000002").glob("*model_states.pt")
    module = torch.load(module_file, weights_only=False, map_location="cpu")["module"]
    assert any(".lora_" in k for k in module)
    assert {k for k in module if ".lora_" not in k} <= {"base_model.model.lm_head.weight"}, sorted(module)[:5]

    a, b = (loaded(run / "final") for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (straight, resumed)]
    assert rows[0] == rows[1]

    # final/ is the merged model under the base names: only the adapted projections moved.
    original = loaded(tiny_models["student"])
    assert a.keys() == original.keys()
    changed = {k for k in a if not torch.equal(a[k], original[k])}
    assert changed and all(k.rsplit(".", 1)[0].endswith(ATTENTION) for k in changed), changed


def test_lever_combinations_that_cannot_work_are_refused(tiny_models, tmp_path):
    with pytest.raises(ValueError, match=r"lora: target_modules \['qproj'\] .* do not match the model: "
                                         r"Target modules \{'qproj'\} not found"):
        run_sft(sft_config(tiny_models, tmp_path / "run", "lora.target_modules=[qproj]"))  # on the meta device, before Ray
    with pytest.raises(ConfigError, match=r"'deepspeed.offload_params: cpu' needs 'deepspeed.zero_stage: 3'"):
        sft_config(tiny_models, "x", "deepspeed.offload_params=cpu")
    with pytest.raises(ConfigError, match=r"adapts the router \(mlp.gate.weight\) but 'trainer.freeze_router' is true"):
        sft_config(tiny_models, "x", "lora.target_parameters=[mlp.gate.weight]", "trainer.freeze_router=true")
    with pytest.raises(ConfigError, match=r"'lora.export' must be one of \['merged', 'adapter'\]"):
        sft_config(tiny_models, "x", "lora.export=both")
