"""Colocated OPD and LoRA OPD on the tiny suite: the same run as the disaggregated one, sharing devices."""


import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import ConfigError
from posttrain.stages.opd.loop import run_opd
from tests.helpers import opd_config, records

# A short LoRA run on the qwen3_moe teacher alone, small enough to run three times.
SHORT_LORA = ("eval.every=0", "rollout.prompts_per_step=8", "lora.enabled=true", "rollout.max_new_tokens=24",
              "optim.lr=1e-2")


def config(tiny_models, out, *overrides):
    return opd_config(tiny_models, out, (2,), *SHORT_LORA, *overrides)


@pytest.mark.slow  # long: CI's slow step (pytest -m slow); see README, Tests and CI
def test_colocated_lora_opd_gives_the_disaggregated_steps(tiny_models, ray_local, tmp_path):
    apart, together = tmp_path / "apart", tmp_path / "together"
    run_opd(config(tiny_models, apart, "lora.export=adapter"))
    run_opd(config(tiny_models, together, "rollout.colocate=true"))
    a, b = records(apart), records(together)
    assert len(a) == len(b) == 2
    # Same samples, same teacher scores, same update: the groups only took turns on shared bundles.
    for key in ("reverse_kl", "loss", "response_len"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=1e-6), key
    assert a[1]["reverse_kl"] != a[0]["reverse_kl"]  # step 2 sampled from the updated (merged) student

    # lora.export=adapter: peft's adapter on the base; merged, it equals the colocated run's merged export.
    from peft import PeftModel

    assert (apart / "final" / "adapter_config.json").exists() and not (apart / "final" / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    merged = PeftModel.from_pretrained(base, apart / "final").merge_and_unload().state_dict()
    exported = AutoModelForCausalLM.from_pretrained(together / "final").state_dict()
    for key, tensor in exported.items():
        torch.testing.assert_close(merged[key], tensor, atol=1e-6, rtol=0)
    assert not ray.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_colocation_needs_a_bundle_per_colocated_worker(tiny_models):
    with pytest.raises(ConfigError, match=r"'rollout.num_workers' \(2\) must be <= 'trainer.num_workers' \(1\)"):
        config(tiny_models, "unused", "rollout.colocate=true", "rollout.num_workers=2")
