"""`posttrain plan`: the tables for both Marco-Mini configs, and invariants of the memory model."""

from __future__ import annotations

import pytest

from posttrain.cli import main
from posttrain.config import ConfigError, OPDConfig, SFTConfig, load_config
from posttrain.planning.plan import GPUS, GiB, GPU, plan

SFT, OPD = "configs/marco_mini/sft.yaml", "configs/marco_mini/opd.yaml"


def _trainer(p: dict) -> dict:
    return next(g for g in p["groups"] if g["group"] == "trainer")


def _sharded(p: dict) -> float:
    rows = _trainer(p)["rows"]
    return rows["weights"] + rows["gradients"] + rows["optimizer"]


def test_plan_prints_the_table_for_both_marco_mini_configs(capsys):
    assert main(["plan", "--config", SFT, "--gpus", "64", "--gpu", "h100"]) == 0
    sft = capsys.readouterr().out
    assert "sft of marco_mini on 64 x H100 SXM 80GB" in sft
    assert "trainer (marco_mini)   64" in sft and "fits: every group within" in sft
    # The SFT time is the calibration point: it reproduces the card's ~24 h and ~3,000 tokens/s/GPU.
    assert "24.0 h   for 4,000 steps (card: ~24 h on 64 GPUs)" in sft and "3,034 tokens/s/GPU" in sft
    assert "train_mfu" in sft and "card:" in sft and "assumed:" in sft  # every constant says its source

    assert main(["plan", "--config", OPD, "--gpus", "64", "--gpu", "h100"]) == 0
    opd = capsys.readouterr().out
    for group in ("trainer (marco_mini)", "rollout (marco_mini)", "teacher 1 (qwen3_30b_a3b)",
                  "teacher 2 (qwen3_next_80b_a3b)"):
        assert group in opd
    assert "fits: every group within H100 SXM 80GB's memory" in opd
    assert "engines of tensor_parallel_size 4, max_model_len 10,241" in opd and "one weight-sync bucket of 512 MB" in opd
    assert "rollout (decode)" in opd and "(card: 104.2 s)" in opd and "(card: ~110 h on 64 GPUs)" in opd


def test_the_sft_step_count_is_derived_from_the_config_and_the_mixture(capsys, tmp_path):
    """One epoch of the card's mixture (its sources' take/size) at 512 sequences a step is the card's ~4,000 steps;
    the plan says how it got there, and that it is an estimate."""
    assert main(["plan", "--config", SFT, "--gpus", "64", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    derived = next(line for line in out.splitlines() if "steps (card: ~4,000) from" in line)
    steps = int(derived.split()[0].replace(",", ""))
    assert abs(steps - 4000) <= 400
    assert "trainer.epochs 1 x marco_mini_sft.yaml: 2,048,000 rows over 7 sources" in derived
    assert "/ trainer.global_batch_size 512 (an estimate" in derived
    assert main(["plan", "--config", SFT, "--gpus", "64", "--gpu", "h100", "trainer.epochs=0.5"]) == 0
    assert "2,000 steps (card: ~4,000) from trainer.epochs 0.5" in capsys.readouterr().out
    (tmp_path / "m.yaml").write_text("sources:\n  - {name: big, hub: org/big, format: messages, weight: 1}\n")
    assert main(["plan", "--config", SFT, "--gpus", "64", "--gpu", "h100", f"data.mixture={tmp_path / 'm.yaml'}"]) == 0
    assert "from the card's ~4,000 (the mixture does not tell: source 'big' gives neither 'size' nor a 'take'" \
        in capsys.readouterr().out


@pytest.mark.parametrize("config", [SFT, OPD])
def test_the_card_configs_fit_80gb_gpus_with_headroom(config):
    p = plan(load_config(OPDConfig if config == OPD else SFTConfig, config), 64, GPUS["h100"])
    for group in p["groups"]:
        assert group["total"] < 0.7 * group["capacity"], (group["group"], group["total"] / GiB)


def test_what_the_opd_config_needs_to_fit(capsys):
    """Without its levers the card's split does not fit: the 80B teacher's bf16 weights exceed one GPU, and
    the trainer's 16,384-token micro-batches leave no headroom without activation checkpointing."""
    assert main(["plan", "--config", OPD, "--gpus", "64", "--gpu", "h100", "teacher.gpus_per_worker=1",
                 "teacher.num_workers=16"]) == 1  # does not fit: a script's check fails
    out = capsys.readouterr().out
    assert "teacher 2 needs 155.2 GiB of 68.0 (short by 87.2 GiB)" in out and "tensor parallel >= 4" in out
    unchecked = plan(load_config(OPDConfig, OPD), 64, GPUS["h100"], {"activation_checkpointing": False})
    assert _trainer(unchecked)["total"] > 0.95 * _trainer(unchecked)["capacity"]


def test_the_loss_term_is_one_chunk_not_the_row():
    """The chunked loss's memory does not grow with the micro-batch's tokens beyond its hidden states."""
    short = plan(load_config(SFTConfig, SFT, ["data.pack_tokens=2048"]), 64, GPUS["h100"])
    long = plan(load_config(SFTConfig, SFT, ["data.pack_tokens=16384"]), 64, GPUS["h100"])
    assert _trainer(long)["rows"]["loss"] - _trainer(short)["rows"]["loss"] < 0.1 * GiB
    assert _trainer(long)["rows"]["loss"] < 2.5 * GiB
    halved = plan(load_config(SFTConfig, SFT, ["trainer.loss_chunk_tokens=256"]), 64, GPUS["h100"])
    assert _trainer(halved)["rows"]["loss"] < _trainer(short)["rows"]["loss"]


def test_zero3_shards_and_scales_with_the_gpu_count():
    cfg = load_config(SFTConfig, SFT)
    z3 = plan(cfg, 64, GPUS["h100"])
    z2 = plan(load_config(SFTConfig, SFT, ["deepspeed.zero_stage=2"]), 64, GPUS["h100"])
    assert _trainer(z3)["total"] < _trainer(z2)["total"]
    assert _trainer(z2)["rows"]["weights"] == pytest.approx(2 * 17.25e9, rel=0.01)  # replicated bf16
    z3_128 = plan(cfg, 128, GPUS["h100"])
    assert _sharded(z3_128) / _sharded(z3) == pytest.approx(0.5, rel=1e-6)
    assert _trainer(z3_128)["rows"]["activations"] == _trainer(z3)["rows"]["activations"]  # per micro-batch


def test_a_tiny_gpu_reports_does_not_fit_with_the_shortfall(capsys):
    assert main(["plan", "--config", SFT, "--gpus", "64", "--gpu-memory-gb", "16"]) == 1  # does not fit: exit 1
    out = capsys.readouterr().out
    p = plan(load_config(SFTConfig, SFT), 64, GPU("small", 16, 989e12, 3.35e12, "test"))
    short = _trainer(p)["short"] / GiB
    assert short == pytest.approx(_trainer(p)["total"] / GiB - 16)
    assert f"does NOT fit: trainer needs {_trainer(p)['total'] / GiB:.1f} GiB of 16.0 (short by {short:.1f} GiB)" in out


def test_levers_move_the_terms_they_should():
    cfg = load_config(OPDConfig, OPD)
    base = plan(cfg, 64, GPUS["h100"], {"activation_checkpointing": False})
    ckpt = plan(cfg, 64, GPUS["h100"], {"activation_checkpointing": True})
    assert _trainer(ckpt)["rows"]["activations"] < _trainer(base)["rows"]["activations"] / 10
    assert ckpt["time"]["phases"][2]["s"] == pytest.approx(base["time"]["phases"][2]["s"] * 8 / 6)  # one more forward
    offload = plan(cfg, 64, GPUS["h100"], {"offload_optimizer": True})
    assert _trainer(offload)["rows"]["optimizer"] == 0 and _trainer(offload)["cpu_offloaded"] == pytest.approx(
        _trainer(base)["rows"]["optimizer"])
    lora = plan(cfg, 64, GPUS["h100"], {"lora_rank": 16})
    assert _trainer(lora)["rows"]["optimizer"] < _trainer(base)["rows"]["optimizer"] / 100
    colocated = plan(cfg, 64, GPUS["h100"], {"colocated": True})
    peak = next(g for g in colocated["groups"] if g["group"] == "colocated (peak)")
    trainer, engine = _trainer(colocated), 0.85 * 80 * GiB  # an awake vLLM engine's gpu_memory_utilization share
    resident = trainer["rows"]["weights"] + trainer["rows"]["gradients"] + trainer["rows"]["optimizer"]
    assert peak["total"] == pytest.approx(max(trainer["total"], resident + engine))
    assert peak["total"] < trainer["total"] + 2 * engine  # taking turns, not the sum of the three


def test_the_plans_engines_are_the_ones_the_run_starts():
    """The plan sizes the inference engines as posttrain.engines.sizing does for the run: tensor parallel =
    gpus_per_worker, max_model_len = prompt + response budget (+1 for a teacher's throw-away token)."""
    from posttrain.engines.sizing import rollout_size, teacher_size

    def groups(cfg):
        return {g["group"]: g for g in plan(cfg, 64, GPUS["h100"])["groups"]}

    cfg = load_config(OPDConfig, OPD)
    as_configured = groups(cfg)
    assert as_configured["rollout"]["max_model_len"] == rollout_size(cfg).max_model_len == 10_240
    assert as_configured["teacher 2"]["max_model_len"] == teacher_size(cfg).max_model_len == 10_241
    next_80b = as_configured["teacher 2"]
    assert next_80b["tensor_parallel"] == cfg.teacher.gpus_per_worker
    assert next_80b["fits"] == (next_80b["tensor_parallel"] >= 4)  # the config and the plan agree either way
    if not next_80b["fits"]:
        assert "needs tensor parallel >= 4 GPUs per engine (teacher.gpus_per_worker=4)" in next_80b["note"]
    four = groups(load_config(OPDConfig, OPD, ["teacher.gpus_per_worker=4", "teacher.num_workers=4"]))
    assert four["teacher 2"]["tensor_parallel"] == 4 and four["teacher 2"]["fits"]


def test_the_weight_sync_time_is_the_transport_the_code_runs():
    """Rank 0 gathers (ZeRO-3) into /dev/shm buckets; the rollout engines' 2 nodes get each bucket through
    the object store and a relay's copy; every engine loads it: bf16 bytes over each leg's bandwidth."""
    from posttrain.planning.plan import CONSTANTS

    p = plan(load_config(OPDConfig, OPD), 64, GPUS["h100"])
    sync = next(ph for ph in p["time"]["phases"] if ph["phase"] == "weight sync")
    nbytes, c = 2 * 17.25e9, {k: v.value for k, v in CONSTANTS.items()}
    legs = (1 / c["sync_gather_bytes_per_s"] + 2 / c["sync_pcie_bytes_per_s"] + 2 / c["sync_memcpy_bytes_per_s"]
            + 2 / c["sync_object_store_bytes_per_s"])
    assert sync["s"] == pytest.approx(nbytes * legs, rel=0.01)
    assert "/dev/shm buckets" in sync["how"] and "object store to 2 node(s)" in sync["how"]
    nccl = plan(load_config(OPDConfig, OPD, ["rollout.weight_transfer=nccl"]), 64, GPUS["h100"])
    sync = next(ph for ph in nccl["time"]["phases"] if ph["phase"] == "weight sync")
    assert sync["s"] == pytest.approx(nbytes * (1 / c["sync_gather_bytes_per_s"] + 1 / c["sync_nccl_bytes_per_s"]), rel=0.01)


@pytest.mark.parametrize("gpus, split", [(3, None), (5, None), (24, (12, 6, 6)), (7, (4, 2, 1)), (64, (32, 16, 16))])
def test_the_groups_add_up_to_the_gpus_and_a_group_smaller_than_its_tensor_parallel_is_refused(gpus, split):
    cfg = load_config(OPDConfig, OPD, [] if gpus in (3, 5, 24, 64) else ["teacher.gpus_per_worker=1"])
    if split is None:  # the teacher group would get fewer GPUs than one tensor-parallel-4 engine
        with pytest.raises(ConfigError, match=rf"--gpus {gpus}: the teacher group gets 1 GPU\(s\), fewer than one "
                                              r"engine's tensor parallel size \(teacher\.gpus_per_worker = 4\)"):
            plan(cfg, gpus, GPUS["h100"])
        return
    got = plan(cfg, gpus, GPUS["h100"])["config"]["split"]
    assert (got["trainer"], got["rollout"], got["teacher"]) == split and sum(got.values()) == gpus


def test_zero_gpus_and_too_few_for_three_groups_are_refused(capsys):
    assert main(["plan", "--config", OPD, "--gpus", "0"]) == 2
    assert "--gpus must be >= 1, got 0" in capsys.readouterr().err
    assert main(["plan", "--config", OPD, "--gpus", "2", "teacher.gpus_per_worker=1"]) == 2
    assert "OPD's three groups (trainer, rollout, teacher) need a GPU each" in capsys.readouterr().err


def test_the_teachers_prompt_logprob_peak_is_counted_and_every_card_group_still_fits(capsys):
    """Issue 24 row 4: vLLM computes full-vocabulary logits and an fp32 log-softmax for a teacher's prefill
    chunk, which its start-up profile does not count (~15 GB at LLM's default 16,384 tokens and V = 151,936):
    a mid-run OOM on top of gpu_memory_utilization 0.85. The planner counts it (4,096 tokens: 3.5 GiB) and
    the engine starts with its utilization lowered by it."""
    from posttrain.engines.sizing import prompt_logprob_peak_bytes, teacher_size

    cfg = load_config(OPDConfig, OPD)
    p = plan(cfg, 64, GPUS["h100"])
    peak = prompt_logprob_peak_bytes(teacher_size(cfg), 151_936)
    assert peak == 4096 * 151_936 * 6
    teachers = [g for g in p["groups"] if g["group"].startswith("teacher")]
    assert len(teachers) == 2 and all(g["rows"]["prompt_logprobs_peak"] == peak for g in teachers)
    assert "prompt_logprobs_peak" not in next(g for g in p["groups"] if g["group"] == "rollout")["rows"]
    assert all(g["fits"] for g in p["groups"])
    main(["plan", "--config", OPD, "--gpus", "64", "--gpu", "h100"])
    out = capsys.readouterr().out
    assert "logp" in out and "3.5 GiB outside vLLM's profile, so the engine starts at gpu_memory_utilization 0.807" in out
