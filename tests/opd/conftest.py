"""What the OPD tests share: the tiny config, the fault tests' common run and its undisturbed result."""

import json

import pytest
import torch
from safetensors.torch import load_file

from posttrain.config import OPDConfig, TeacherStage, load_config
from posttrain.opd.loop import run_opd

TINY = "configs/tiny/opd.yaml"


def config(tiny_models, out, stages=(6, 6), *overrides, student=None):
    cfg = load_config(OPDConfig, TINY, [f"model.path={student or tiny_models['student']}", f"output_dir={out}",
                                        "logging.progress_bar=false", "logging.tensorboard=false", *overrides])
    cfg.teachers = [TeacherStage(str(tiny_models["teacher-moe"]), stages[0]),
                    TeacherStage(str(tiny_models["teacher-next"]), stages[1])][:len(stages)]
    return cfg


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# The fault tests' common run: 2 + 3 steps, checkpoints at 2 (end of stage 1), 3 and 5, no eval.
FAULT_RUN = ("checkpoint.every=3", "eval.every=0")


def prompt_ids(out):
    return [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]


def same_weights(a, b):
    a, b = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="package")
def undisturbed(tiny_models, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("opd") / "undisturbed"
    run_opd(config(tiny_models, out, (2, 3), *FAULT_RUN))
    return out
