"""The trainer's weight sync streams: module by module (ZeRO-3 gathers included), one bucket alive at a
time, so rank 0's host memory grows by about one bucket during a sync, not by copies of the model."""

import os

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from posttrain.config import DeepSpeedConfig, ModelConfig, OptimConfig, RolloutConfig, TrainerConfig
from posttrain.engines.group import RolloutGroup
from posttrain.infra.weight_buckets import SHM_DIR, SHM_PREFIX
from posttrain.train.group import TrainerGroup
from posttrain.train.weight_stream import named_weights, send_weights

MiB = 2**20


def test_named_weights_are_the_state_dict_with_the_tied_head_once(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    streamed = {name: tensor.clone() for name, tensor in named_weights(model, zero3=False, lora=False)}
    state = model.state_dict()
    assert streamed.keys() == state.keys() - {"lm_head.weight"}  # tied to model.embed_tokens.weight
    assert all(torch.equal(streamed[k], state[k]) for k in streamed)


def test_a_bucket_reaches_engines_on_other_nodes_through_a_relay(tiny_models, ray_local):
    """The sender believes the worker is on another node: the bucket goes through the object store and the
    relay's /dev/shm copy on the worker's node, and the worker serves the same weights. A parameter left
    out of a sync fails it (it would keep its old value)."""
    rollout = RolloutGroup(str(tiny_models["student"]), RolloutConfig(cpus_per_worker=0.5))
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    try:
        node = ray.get(rollout.workers[0].node_id.remote())
        stats = send_weights(named_weights(model, False, False), rollout.workers, [node], "another-node", 0.25)
        assert stats.buckets > 1
        served = ray.get(rollout.workers[0].state_dict.remote())
        assert all(torch.equal(served[k], v) for k, v in model.state_dict().items())
        partial = ((n, t) for n, t in named_weights(model, False, False) if n != "model.norm.weight")
        with pytest.raises(ray.exceptions.RayTaskError, match=r"1 parameter\(s\) of the rollout model were not sent, "
                                                              r"e.g. \['model.norm.weight'\]"):
            send_weights(partial, rollout.workers, [node], node, 0.25)
        assert not [f for f in os.listdir(SHM_DIR) if f.startswith(SHM_PREFIX + str(os.getpid()))]  # no bucket left
    finally:
        rollout.close()


@pytest.mark.slow  # long: CI's slow step (pytest -m slow); see README, Tests and CI
def test_a_zero3_sync_grows_rank_0s_memory_by_about_a_bucket(tmp_path, ray_local):
    """A 4-layer MoE of 59 MB, ZeRO-3, 4 MiB buckets: the sync gathers one module at a time (the largest,
    a layer's fused experts, is 8.4 MB) and copies it into the bucket of the moment. Before, rank 0 held
    the consolidated state dict, a flat copy and the object store's copy: 3 x 59 MB."""
    config = Qwen3MoeConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                            num_experts=16, num_experts_per_tok=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "moe")
    model_bytes = sum(p.numel() * 4 for p in AutoModelForCausalLM.from_pretrained(tmp_path / "moe").parameters())
    trainer = TrainerGroup(ModelConfig(path=str(tmp_path / "moe")), TrainerConfig(cpus_per_worker=1),
                           OptimConfig(), DeepSpeedConfig(zero_stage=3), 1, pad_id=0)
    rollout = RolloutGroup(str(tmp_path / "moe"), RolloutConfig(cpus_per_worker=0.5))
    rollout.sender = lambda workers, nodes: trainer.send_weights(workers, nodes, bucket_mb=4)
    try:
        stats = rollout.update_weights()
        served = ray.get(rollout.workers[0].state_dict.remote())
        exported = trainer._all("full_state_dict")[0]
        assert all(torch.equal(served[k], exported[k]) for k in exported)
        assert model_bytes > 50 * MiB and stats.bytes >= model_bytes - 2 * MiB  # the tied head sent once (54.6 MB on transformers 5.19)
        assert 0 < stats.host_peak_growth_bytes < 4 * MiB + 2 * 8.4 * MiB + 4 * MiB, (stats, model_bytes)
    finally:
        rollout.close()
        trainer.close()
