"""Engine sizing read from the run's config (posttrain.engines.sizing)."""

from posttrain.config import OPDConfig, load_config
from posttrain.engines.sizing import rollout_size, teacher_size


def test_the_rollout_samples_in_the_dtype_the_trainer_computes_in():
    """Issue 24 row 10: `model.dtype: float32` with `deepspeed.bf16: true` trains in bf16 (DeepSpeed casts the
    module) but sampled in fp32, so the importance ratio was off from step 1."""
    cfg = load_config(OPDConfig, "configs/tiny/opd.yaml", ["model.dtype=float32", "deepspeed.bf16=true"])
    assert rollout_size(cfg).dtype == "bfloat16"
    cfg = load_config(OPDConfig, "configs/tiny/opd.yaml", ["model.dtype=float32", "deepspeed.bf16=false"])
    assert rollout_size(cfg).dtype == "float32"
    cfg = load_config(OPDConfig, "configs/marco_mini/opd.yaml", [])
    assert rollout_size(cfg).dtype == "bfloat16" and teacher_size(cfg).dtype == cfg.teacher.dtype
