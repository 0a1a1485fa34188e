"""The command line's handling of output directories (no training: config resolution only)."""

from posttrain.cli import build_parser
from posttrain.stages.args import stage_config
from tests.helpers import hold_a_run


def _args(*argv):
    args, extra = build_parser().parse_known_args(["sft", "--config", "configs/tiny/sft.yaml", *argv])
    args.overrides = list(args.overrides) + extra
    return args


def test_the_config_default_directory_is_never_reused_silently(tmp_path, capsys):
    default = hold_a_run(tmp_path / "sft")
    hold_a_run(tmp_path / "sft-1")
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


def test_every_argument_of_every_subcommand_has_help():
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {action.dest}" for name, sub in commands.items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, missing
    opd_help = commands["opd"].format_help()
    assert "configs/tiny/opd.yaml" in opd_help and "sft.yaml" not in opd_help


def test_the_resume_command_repeats_the_run_with_its_directory(tmp_path):
    from posttrain.stages.args import resume_command

    args, _ = build_parser().parse_known_args(["opd", "--config", "configs/tiny/opd.yaml", "--teacher", "t:2",
                                               "--overwrite", "rollout.max_new_tokens=8"])
    assert resume_command("opd", args, tmp_path / "o p") == (f"posttrain opd --config configs/tiny/opd.yaml --output-dir "
                                                              f"'{tmp_path}/o p' --teacher t:2 rollout.max_new_tokens=8 --resume")
