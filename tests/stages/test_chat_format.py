"""One chat format through the pipeline: a Base student whose template and end-of-turn token are not its teachers'
is refused by OPD (naming where the formats part); SFT with `model.chat_template_from=TEACHER` trains and exports
the teacher's format, and OPD then starts on the export."""

import json
import shutil

import pytest
from transformers import AutoTokenizer, GenerationConfig

from posttrain.config import ConfigError
from posttrain.models.locate import ModelError
from posttrain.stages.opd.checks import TeacherMismatch, check_cascade, check_opd
from posttrain.stages.opd.loop import run_opd
from posttrain.stages.sft import run_sft
from tests.helpers import opd_config, records, sft_config, small_sft_mixture

# A Qwen3-Base-like convention: the same ChatML turns, but the generation prompt opens an empty thinking block.
BASE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)


def base_student(tiny_models, out, end_of_turn: bool):
    """The tiny student with a Base model's template (and, with `end_of_turn`, its `<|endoftext|>` end of turn)."""
    shutil.copytree(tiny_models["student"], out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = BASE_TEMPLATE
    if end_of_turn:
        tokenizer.eos_token = "<|endoftext|>"
        endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        GenerationConfig(eos_token_id=endoftext, pad_token_id=endoftext).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_student_in_another_format_is_refused_then_sft_in_the_teachers_format_lets_opd_start(
        tiny_models, ray_local, tmp_path):
    teacher = str(tiny_models["teacher-moe"])
    template_only = base_student(tiny_models, tmp_path / "base-template", end_of_turn=False)
    cfg = opd_config(tiny_models, tmp_path / "x", (1,), student=str(template_only))
    with pytest.raises(TeacherMismatch, match=r"have different chat templates: rendering \['user'\] they differ from "
                                              r"token \d+: teacher \.\.\.'.*'\.\.\., student \.\.\.'.*<think>"):
        check_cascade(cfg, AutoTokenizer.from_pretrained(template_only))

    base = base_student(tiny_models, tmp_path / "base", end_of_turn=True)
    cfg = opd_config(tiny_models, tmp_path / "y", (1,), student=str(base))
    with pytest.raises(TeacherMismatch, match=r"different special-token ids \(eos_token"):
        check_cascade(cfg, AutoTokenizer.from_pretrained(base))

    sft_out = tmp_path / "sft"
    run_sft(sft_config(tiny_models, sft_out, f"model.path={base}", f"model.chat_template_from={teacher}",
                       f"data.mixture={small_sft_mixture(tmp_path / 'data')}", "trainer.max_steps=2",
                       "logging.tensorboard=false"))
    final = sft_out / "final"
    exported, teachers = AutoTokenizer.from_pretrained(final), AutoTokenizer.from_pretrained(teacher)
    assert exported.chat_template == teachers.chat_template and exported.eos_token == teachers.eos_token
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == \
        json.loads((tiny_models["teacher-moe"] / "generation_config.json").read_text())["eos_token_id"]

    out = tmp_path / "opd"
    run_opd(opd_config(tiny_models, out, (1,), "eval.every=0", "rollout.prompts_per_step=4", student=str(final)))
    assert [r["step"] for r in records(out)] == [1] and (out / "final" / "model.safetensors").exists()


def test_a_format_from_a_model_of_another_vocabulary_is_refused(tiny_models, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_models["teacher-moe"], other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|not_in_the_student|>"])
    tokenizer.save_pretrained(other)
    from posttrain.stages.driver import load_tokenizer

    cfg = sft_config(tiny_models, tmp_path / "run", f"model.chat_template_from={other}")
    with pytest.raises(ModelError, match=r"model\.chat_template_from: .*other has another vocabulary"):
        load_tokenizer(cfg.model)


def test_opd_refuses_a_format_taken_at_distillation_time(tiny_models, tmp_path):
    cfg = opd_config(tiny_models, tmp_path / "run", (1,), f"model.chat_template_from={tiny_models['teacher-moe']}")
    with pytest.raises(ConfigError, match=r"'model\.chat_template_from' .* is the SFT stage's"):
        check_opd(cfg)
