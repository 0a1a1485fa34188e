"""The command line's handling of output directories (no training: config resolution only)."""

from posttrain.cli import build_parser
from posttrain.stages.args import stage_config


def _args(*argv):
    args, extra = build_parser().parse_known_args(["sft", "--config", "configs/tiny/sft.yaml", *argv])
    args.overrides = list(args.overrides) + extra
    return args


def test_the_config_default_directory_is_never_reused_silently(tmp_path, capsys):
    default = tmp_path / "sft"
    default.mkdir()
    (default / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "sft-1").mkdir()
    (tmp_path / "sft-1" / "metrics.jsonl").write_text("{}\n")
    cfg = stage_config("sft", _args(f"output_dir={default}"))
    assert cfg.output_dir == str(default)  # named explicitly: the stage refuses it (RunDirError), not renamed

    import yaml

    config = tmp_path / "sft.yaml"
    raw = yaml.safe_load(open("configs/tiny/sft.yaml"))
    raw["output_dir"] = str(default)
    config.write_text(yaml.safe_dump(raw))
    args, _ = build_parser().parse_known_args(["sft", "--config", str(config)])
    cfg = stage_config("sft", args)
    assert cfg.output_dir == f"{default}-2"
    assert "holds an earlier run" in capsys.readouterr().out
    args, _ = build_parser().parse_known_args(["sft", "--config", str(config), "--resume"])
    assert stage_config("sft", args).output_dir == str(default)
