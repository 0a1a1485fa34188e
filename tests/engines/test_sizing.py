"""Engine sizing read from the run's config (posttrain.engines.sizing)."""

from posttrain.config import OPDConfig, load_config
from posttrain.engines.sizing import resume_caveat, rollout_size, teacher_size


def test_the_rollout_samples_in_the_dtype_the_trainer_computes_in():
    """Issue 24 row 10: `model.dtype: float32` with `deepspeed.bf16: true` trains in bf16 (DeepSpeed casts the
    module) but sampled in fp32, so the importance ratio was off from step 1."""
    cfg = load_config(OPDConfig, "configs/tiny/opd.yaml", ["model.dtype=float32", "deepspeed.bf16=true"])
    assert rollout_size(cfg).dtype == "bfloat16"
    cfg = load_config(OPDConfig, "configs/tiny/opd.yaml", ["model.dtype=float32", "deepspeed.bf16=false"])
    assert rollout_size(cfg).dtype == "float32"
    cfg = load_config(OPDConfig, "configs/marco_mini/opd.yaml", [])
    assert rollout_size(cfg).dtype == "bfloat16" and teacher_size(cfg).dtype == cfg.teacher.dtype


def test_a_resume_on_gpus_says_it_repeats_the_seeds_not_the_tokens():
    """Issue 24 row 8: "a resumed step samples the same tokens" holds for the CPU engines the resume tests run,
    not on a GPU (multiprocess engine, CUDA graphs, batch-dependent kernels): a GPU run says so when it resumes."""
    cpu = load_config(OPDConfig, "configs/tiny/opd.yaml", [])
    assert resume_caveat(cpu) == ""
    gpu = load_config(OPDConfig, "configs/marco_mini/opd.yaml", [])
    assert "not the same bits" in resume_caveat(gpu)
    colocated = load_config(OPDConfig, "configs/tiny/opd.yaml", ["rollout.colocate=true", "trainer.gpus_per_worker=1"])
    assert resume_caveat(colocated)


def test_a_teacher_engine_leaves_room_for_its_prompt_logprobs():
    """Issue 24 row 4: the teacher's prefill chunk is bounded (teacher.max_num_batched_tokens) and the engine's
    gpu_memory_utilization lowered by the peak vLLM's profile misses, or refused where nothing would be left."""
    import pytest

    from posttrain.engines.sizing import prompt_logprob_peak_bytes, utilization_beside

    card = load_config(OPDConfig, "configs/marco_mini/opd.yaml", [])
    size = teacher_size(card)
    assert size.max_num_batched_tokens == 4096
    peak = prompt_logprob_peak_bytes(size, 151_936)
    h100 = 80 * 2**30
    assert utilization_beside(0.85, peak, h100) == pytest.approx(0.85 - peak / h100) and peak / 2**30 == pytest.approx(3.48, abs=0.01)
    default_llm = prompt_logprob_peak_bytes(teacher_size(load_config(OPDConfig, "configs/marco_mini/opd.yaml",
                                                                     ["teacher.max_num_batched_tokens=16384"])), 151_936)
    assert default_llm / 1e9 == pytest.approx(14.9, abs=0.1)  # what LLM's default chunk would have cost
    with pytest.raises(ValueError, match=r"leaves no room for the prompt log-probs' 13\.9 GiB on a 16 GiB device"):
        utilization_beside(0.9, default_llm, 16 * 2**30)
