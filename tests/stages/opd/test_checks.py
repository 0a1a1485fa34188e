"""OPD's checks before any worker starts: a teacher that reads the student's tokens differently (another
chat template, end-of-turn id or special-token id) is refused with the difference named; and a sampler
that would not draw from the distribution the trainer scores (temperature or top-p) is refused at config time."""

import json
import re
import shutil

import pytest

from posttrain.config import ConfigError, OPDConfig, load_config
from posttrain.stages.opd.checks import TeacherMismatch
from posttrain.stages.opd.loop import run_opd
from tests.helpers import FAULT_RUN, TINY_OPD, opd_config


def teacher_copy(tiny_models, tmp_path):
    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_models["teacher-moe"], other)
    return other


def refused(tiny_models, tmp_path, teacher) -> str:
    """run_opd with `teacher` is refused before the run directory exists or Ray is reached (the address is
    one where nothing listens, which only a run past the checks would try)."""
    out = tmp_path / "run"
    cfg = opd_config(tiny_models, out, (1,), *FAULT_RUN)
    cfg.teachers[0].path = str(teacher)
    with pytest.raises(TeacherMismatch) as refusal:
        run_opd(cfg, ray_address="127.0.0.1:9")
    assert not out.exists()
    return str(refusal.value)


def test_a_teacher_with_another_chat_template_is_refused(tiny_models, tmp_path):
    other = teacher_copy(tiny_models, tmp_path)
    config = json.loads((other / "tokenizer_config.json").read_text())
    template = (other / "chat_template.jinja")
    if template.exists():  # transformers 5 keeps the template beside the tokenizer config
        template.write_text(template.read_text().replace("<|im_start|>assistant\\n", "<|im_start|>assistant\\n\\n"))
    else:
        config["chat_template"] = config["chat_template"].replace("<|im_start|>assistant\\n", "<|im_start|>assistant\\n\\n")
        (other / "tokenizer_config.json").write_text(json.dumps(config))
    message = refused(tiny_models, tmp_path, other)
    assert re.search(rf"teacher {other} \(teachers\[0\]\) and the student .* have different chat templates: rendering "
                     r"\['user'\] they differ from token \d+", message), message
    assert "assistant" in message


def test_a_teacher_with_another_end_of_turn_id_is_refused(tiny_models, tmp_path):
    other = teacher_copy(tiny_models, tmp_path)
    generation = json.loads((other / "generation_config.json").read_text())
    generation["eos_token_id"] = 1  # <|im_start|> instead of <|im_end|> / <|endoftext|>
    (other / "generation_config.json").write_text(json.dumps(generation))
    message = refused(tiny_models, tmp_path, other)
    assert re.search(r"end their turns with different tokens: teacher \{.*1 '<\|im_start\|>'.*\}, student \{0 '<\|endoftext\|>', "
                     r"2 '<\|im_end\|>'\}", message), message


def test_a_teacher_with_another_special_token_id_is_refused(tiny_models, tmp_path):
    other = teacher_copy(tiny_models, tmp_path)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["pad_token"] = "<|fim_pad|>"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    message = refused(tiny_models, tmp_path, other)
    assert re.search(r"different special-token ids \(pad_token '<\|endoftext\|>': teacher none, student 0; "
                     r"pad_token '<\|fim_pad\|>': teacher 19, student none\)", message), message


def test_the_tiny_teachers_pass_the_checks(tiny_models):
    from posttrain.stages.opd.checks import check_opd

    check_opd(opd_config(tiny_models, "unused", (1, 1)))  # both teachers: the qwen3_moe and the qwen3_next one


@pytest.mark.parametrize("override, reason", [
    ("rollout.temperature=0.7", r"'rollout\.temperature' must be 1\.0 for OPD, got 0\.7: OPD trains the student's own "
                                r"distribution: the loss's importance ratio"),
    ("rollout.top_p=0.9", r"'rollout\.top_p' must be 1\.0 for OPD, got 0\.9: .*top-p truncates the sampler's distribution"),
])
def test_a_sampler_that_is_not_the_students_distribution_is_refused_at_config_time(override, reason):
    with pytest.raises(ConfigError, match=reason):
        load_config(OPDConfig, TINY_OPD, [override])


def test_a_top_k_loss_without_the_teachers_top_k_is_refused(tiny_models, tmp_path):
    from posttrain.stages.opd.checks import check_choices

    for mode in ("topk", "topk_sampled", "topk_jsd"):
        with pytest.raises(ConfigError, match=rf"'loss.mode: {mode}' needs the teacher's top-k: 'loss.topk' must be > 0, got 0"):
            check_choices(opd_config(tiny_models, tmp_path, (1,), f"loss.mode={mode}", "loss.topk=0"))
    check_choices(opd_config(tiny_models, tmp_path, (1,), "loss.mode=sampled", "loss.topk=0"))  # top-k: its metric only
