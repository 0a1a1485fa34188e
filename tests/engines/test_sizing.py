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
