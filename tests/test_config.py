import pytest

from posttrain.config import ConfigError, OPDConfig, SFTConfig, load_config, to_dict

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


def tagged_keys(path: str, tag: str) -> set[str]:
    """The dotted keys whose line in `path` carries the comment tag `[tag]`."""
    keys, section = set(), ""
    for line in open(path, encoding="utf-8"):
        body = line.split("#")[0]
        if body.strip() and not body.startswith(" "):
            section = body.split(":")[0].strip()
        if f"[{tag}]" in line and body.strip():
            key = body.strip().split(":")[0].lstrip("- {")
            keys.add(section if key == section else f"{section}.{key}")
    return keys


def test_marco_mini_opd_config_is_the_cards_run_with_its_assumptions_marked():
    from posttrain.stages.args import stage_config, stage_parser

    args = stage_parser("opd").parse_args(["--config", "configs/marco_mini/opd.yaml"])
    cfg = stage_config("opd", args, pick_free_dir=False)  # what `posttrain opd --config ...` resolves to
    assert cfg.loss.mode == "sampled"  # the card's objective: the sampled token's reverse KL
    assert (cfg.optim.lr, cfg.optim.schedule) == (1e-6, "constant") and cfg.rollout.samples_per_prompt == 2
    assert [(t.path, t.steps) for t in cfg.teachers] == [("Qwen/Qwen3-30B-A3B-Instruct-2507", 1900),
                                                         ("Qwen/Qwen3-Next-80B-A3B-Instruct", 1900)]
    assert cfg.ray.num_gpus_total == 64 and cfg.data.mixture == "data_mixtures/marco_mini_opd.yaml"
    card = tagged_keys("configs/marco_mini/opd.yaml", "card")
    assert {"teachers", "loss.mode", "optim.lr", "optim.schedule", "rollout.samples_per_prompt"} <= card
    # what the card never gives is said to be an assumption, not credited to the card
    assumed = tagged_keys("configs/marco_mini/opd.yaml", "assumption")
    assert {"rollout.prompts_per_step", "rollout.max_new_tokens", "data.max_prompt_len"} <= assumed
    assert not card & assumed


def test_the_forward_kl_alternative_differs_from_the_card_only_in_its_objective():
    card = load_config(OPDConfig, "configs/marco_mini/opd.yaml")
    alternative = load_config(OPDConfig, "configs/marco_mini/opd_forward_kl.yaml")
    assert (alternative.loss.mode, alternative.loss.beta) == ("topk_jsd", 0.0)
    different = {k for k, v in to_dict(alternative).items() if to_dict(card)[k] != v}
    assert different == {"loss", "output_dir"}


def test_a_variant_config_merges_over_its_base_and_a_loop_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {path: m}\ndata: {mixture: x.yaml}\noptim: {lr: 0.1, schedule: constant}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {lr: 0.5}\n")
    cfg = load_config(SFTConfig, tmp_path / "b.yaml")
    assert (cfg.model.path, cfg.optim.lr, cfg.optim.schedule) == ("m", 0.5, "constant")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: 'base: b\.yaml' leads back to itself"):
        load_config(SFTConfig, tmp_path / "b.yaml")
