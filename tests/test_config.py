import pytest

from posttrain.config import ConfigError, SFTConfig, load_config

TINY = "configs/tiny/sft.yaml"


def test_overrides_are_typed_and_applied():
    cfg = load_config(SFTConfig, TINY, ["trainer.num_workers=2", "deepspeed.zero_stage=3", "optim.lr=1e-5"])
    assert cfg.trainer.num_workers == 2 and cfg.deepspeed.zero_stage == 3
    assert cfg.optim.lr == pytest.approx(1e-5)  # YAML reads "1e-5" as a string; the float field accepts it


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown key 'trainer\.num_worker'; did you mean 'trainer\.num_workers'"):
        load_config(SFTConfig, TINY, ["trainer.num_worker=2"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'trainer\.global_batch_size' expected int, got str 'many'"):
        load_config(SFTConfig, TINY, ["trainer.global_batch_size=many"])


def test_missing_required_value_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  mixture: x.yaml\n")
    with pytest.raises(ConfigError, match=r"missing required value 'model\.path'"):
        load_config(SFTConfig, path)


def test_choice_and_range_checks():
    with pytest.raises(ConfigError, match=r"'deepspeed\.zero_stage' must be one of \[0, 2, 3\], got 1"):
        load_config(SFTConfig, TINY, ["deepspeed.zero_stage=1"])
    with pytest.raises(ConfigError, match=r"'trainer\.num_workers' must be > 0, got 0"):
        load_config(SFTConfig, TINY, ["trainer.num_workers=0"])


def test_marco_mini_config_has_the_card_values():
    cfg = load_config(SFTConfig, "configs/marco_mini/sft.yaml")
    assert cfg.model.path == "AIDC-AI/Marco-Mini-Base"
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.schedule) == (1e-5, 1e-6, "cosine")
    assert cfg.trainer.global_batch_size == 512 and cfg.data.max_seq_len == 8192 and cfg.trainer.epochs == 1
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.bf16 and cfg.model.dtype == "bfloat16"
    assert cfg.trainer.num_workers * cfg.trainer.gpus_per_worker == 64
