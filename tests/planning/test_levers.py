"""The planning formulas of the memory levers (posttrain.planning.levers): each lever shrinks what it should."""

import pytest

from posttrain.config import LoRAConfig
from posttrain.planning.levers import colocated_peak, lora_parameters, training_memory


def test_lora_parameter_count_is_the_trainers(tiny_models):
    from transformers import AutoConfig, AutoModelForCausalLM

    from posttrain.train.lora import apply_lora

    lora = LoRAConfig(enabled=True, rank=4, target_parameters=["mlp.experts.down_proj"])
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_models["student"]), lora)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(AutoConfig.from_pretrained(tiny_models["student"]), lora) == trained


def test_each_lever_shrinks_its_component():
    from posttrain.models.architectures import architecture_config

    config = architecture_config("marco_mini")
    base = training_memory(config, num_devices=8)
    assert base["optimizer"] == pytest.approx(12 * 17.25e9 / 8, rel=0.01)  # fp32 master + Adam m, v of 17.25B
    lora = training_memory(config, num_devices=8, lora=LoRAConfig(enabled=True))
    assert lora["optimizer"] < base["optimizer"] / 1000 and lora["weights"] == base["weights"]
    ckpt = training_memory(config, num_devices=8, activation_checkpointing=True)
    assert ckpt["activations"] < base["activations"] / 5
    offload = training_memory(config, num_devices=8, offload_optimizer=True)
    assert offload["optimizer"] == 0 and offload["host"] == base["optimizer"]
    z3 = training_memory(config, num_devices=8, zero_stage=3)
    z3_offload = training_memory(config, num_devices=8, zero_stage=3, offload_params=True, offload_optimizer=True)
    assert z3["weights"] == base["weights"] / 8 and z3_offload["weights"] < z3["weights"]
    assert colocated_peak(base, 60e9, 80e9) == base["weights"] + base["gradients"] + base["optimizer"] + 80e9
    assert colocated_peak(base, 1e9, 1e9) == base["total"]  # the engines asleep while the trainer steps
