"""What OPD checks before it starts any worker: the loss and backends, the budgets, the student, the
cascade and that every teacher reads the student's tokens as the student does (one vocabulary, the same
special-token and end-of-turn ids, the same chat template), and the eval tasks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from posttrain.config import ConfigError, EvalConfig, OPDConfig
from posttrain.data.chat import prompt_ids
from posttrain.engines.backends import backend
from posttrain.engines.vllm import cpu_problem
from posttrain.eval.tasks import TASKS, TaskExample, examples
from posttrain.infra.runlog import check_wandb
from posttrain.losses import LOSSES
from posttrain.models.end_of_turn import model_end_of_turn_ids
from posttrain.models.locate import check_model_dir, require_model
from posttrain.models.tiny import MODEL_NAMES, ensure_model
from posttrain.stages.driver import load_tokenizer
from posttrain.train.lora import check_lora


class TeacherMismatch(ValueError):
    """A teacher cannot score the student's tokens as the student means them: another vocabulary, other
    special-token or end-of-turn ids, or another chat template."""


VocabularyMismatch = TeacherMismatch  # the name posttrain.cli catches (exit 2, no traceback)

# Conversations rendered with each model's chat template, as the OPD prompts are (the generation prompt
# appended): the teacher scores the student's prompt tokens, so both templates must render them alike.
TEMPLATE_PROBES = (
    [{"role": "user", "content": "What is 2 plus 3?"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a colour."}],
)


def check_opd(cfg: OPDConfig):
    """Every check that needs no worker, in the order a user would fix them; returns the student's
    tokenizer and the eval examples."""
    check_choices(cfg)
    check_budgets(cfg)
    check_student(cfg)
    eval_examples = eval_set(cfg.eval)
    tokenizer = load_tokenizer(cfg.model)
    check_lora(cfg.model, cfg.lora)
    check_wandb(cfg.logging)
    check_cascade(cfg, tokenizer)
    check_engines(cfg)
    return tokenizer, eval_examples


def check_choices(cfg: OPDConfig) -> None:
    """The loss and the engine backends are named in their tables (posttrain.losses, posttrain.engines.backends)."""
    if cfg.loss.mode not in LOSSES:
        raise ConfigError(f"'loss.mode' must be one of {list(LOSSES)}, got {cfg.loss.mode!r}")
    if LOSSES[cfg.loss.mode].needs_teacher_topk and cfg.loss.topk <= 0:
        raise ConfigError(f"'loss.mode: {cfg.loss.mode}' needs the teacher's top-k: 'loss.topk' must be > 0, got {cfg.loss.topk}")
    backend(cfg.rollout.backend, "rollout.backend")
    backend(cfg.teacher.backend, "teacher.backend")
    for i, stage in enumerate(cfg.teachers):
        if stage.backend:
            backend(stage.backend, f"teachers[{i}].backend")


def check_engines(cfg: OPDConfig) -> None:
    """What vLLM on a CPU cannot do, refused before any worker starts: no vLLM installed, colocated
    engines (no sleep mode on a CPU), a model its CPU kernels do not take (head size; qwen3_next's
    linear attention needs bf16 and head dims 64/128)."""
    engines = [("rollout.backend", cfg.rollout.backend, cfg.model.path, cfg.model.dtype, cfg.rollout.gpus_per_worker)]
    engines += [(f"teachers[{i}] ({stage.path})", stage.backend or cfg.teacher.backend, stage.path, cfg.teacher.dtype,
                 cfg.teacher.gpus_per_worker) for i, stage in enumerate(cfg.teachers)]
    engines = [e for e in engines if e[1] == "vllm"]
    if engines and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"{engines[0][0]}: backend 'vllm' needs vLLM, which is not installed: on a CPU run "
                          "scripts/install_vllm_cpu.sh, on a CUDA machine pip install -e '.[gpu]'")
    if cfg.rollout.weight_transfer == "nccl" and (cfg.rollout.backend != "vllm" or cfg.rollout.colocate
                                                  or not cfg.rollout.gpus_per_worker or not cfg.trainer.gpus_per_worker):
        raise ConfigError("rollout.weight_transfer=nccl is vLLM's NCCL engine: it needs rollout.backend=vllm on GPUs "
                          "of their own (rollout and trainer gpus_per_worker > 0, not colocated); use shm")
    if cfg.rollout.colocate and engines and not cfg.trainer.gpus_per_worker:
        raise ConfigError("rollout.colocate with vLLM engines needs GPUs: vLLM has no sleep mode on a CPU, so "
                          "colocated engines could not hand the memory back; use backend hf or rollout.colocate=false")
    for where, _, path, dtype, gpus in engines:
        problem = "" if gpus or (cfg.rollout.colocate and cfg.trainer.gpus_per_worker) else \
            cpu_problem(path, dtype, cfg.model.trust_remote_code)
        if problem:
            fix = "set that stage's backend: hf (teachers: [{path, steps, backend: hf}])" if where.startswith("teachers") \
                else "use rollout.backend=hf"
            raise ConfigError(f"{where}: backend 'vllm' on a CPU cannot run {path}: {problem}; {fix}, or run it on a GPU")


def check_budgets(cfg: OPDConfig) -> None:
    """A whole prompt + response must fit one packed micro-batch; a sample is never split."""
    longest = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    if cfg.data.pack_tokens < longest:
        raise ConfigError(
            f"data.pack_tokens ({cfg.data.pack_tokens}) must be >= data.max_prompt_len + rollout.max_new_tokens "
            f"({cfg.data.max_prompt_len} + {cfg.rollout.max_new_tokens} = {longest})"
        )


def check_student(cfg: OPDConfig) -> None:
    """The student must exist; the default is the SFT stage's export, so say how to make it. Its chat format is
    its own files' (the one its rollouts are sampled in), never one taken from elsewhere at OPD time."""
    if cfg.model.chat_template_from:
        raise ConfigError(f"'model.chat_template_from' ({cfg.model.chat_template_from}) is the SFT stage's: OPD samples "
                          "the student in the format of its own files, so train it in the teacher's format first "
                          "(posttrain sft ... model.chat_template_from=TEACHER) and distil its export")
    path = Path(cfg.model.path)
    if path.name in MODEL_NAMES and cfg.model.build_tiny_if_missing:
        return  # the tiny suite is built on demand
    require_model(cfg.model.path, "model.path", hint=(
        f"model.path: the student {cfg.model.path} does not exist. The default student is the SFT stage's "
        f"export: run `posttrain sft --config configs/tiny/sft.yaml --output-dir {path.parent}` first, "
        "or pass --student PATH (a local HF model directory or a hub id)"))


def eval_set(cfg: EvalConfig) -> list[TaskExample]:
    """The eval-split examples the run is scored on every `eval.every` steps (none when off)."""
    if cfg.every <= 0:
        return []
    for task in cfg.tasks:
        if task not in TASKS:
            raise ConfigError(f"eval.tasks: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return [e for task in cfg.tasks for e in examples(task, "eval", limit=cfg.limit)]


def check_cascade(cfg: OPDConfig, student_tokenizer) -> None:
    from transformers import AutoConfig

    if not cfg.teachers:
        raise ConfigError("teachers: the cascade is empty; give at least one teacher (config or --teacher PATH[:STEPS])")
    student_config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    student_vocab = student_tokenizer.get_vocab()
    remote = cfg.model.trust_remote_code
    student_ends = model_end_of_turn_ids(cfg.model.path, student_tokenizer, remote)
    for i, stage in enumerate(cfg.teachers):
        if stage.steps <= 0:
            raise ConfigError(f"teachers[{i}] ({stage.path}): steps must be > 0, got {stage.steps}")
        ensure_model(stage.path, cfg.model.build_tiny_if_missing, cfg.model.tiny_seed)
        tokenizer = check_model_dir(stage.path, f"teachers[{i}]", remote)
        config = AutoConfig.from_pretrained(stage.path, trust_remote_code=remote)
        teacher_vocab = tokenizer.get_vocab()
        if teacher_vocab != student_vocab or config.vocab_size < len(student_tokenizer):
            raise VocabularyMismatch(
                f"teacher {stage.path} has a vocabulary of {len(tokenizer)} tokens (embedding {config.vocab_size}), "
                f"the student {cfg.model.path} has {len(student_tokenizer)} tokens (embedding {student_config.vocab_size})"
                f"{vocabulary_difference(teacher_vocab, student_vocab)}; the teacher scores the student's own token ids, "
                "so both must use the same tokenizer"
            )
        where = f"teacher {stage.path} (teachers[{i}]) and the student {cfg.model.path}"
        check_special_tokens(where, special_token_ids(tokenizer), special_token_ids(student_tokenizer))
        check_end_of_turn(where, tokenizer, model_end_of_turn_ids(stage.path, tokenizer, remote), student_ends)
        check_chat_template(where, tokenizer, student_tokenizer)


def vocabulary_difference(teacher: dict[str, int], student: dict[str, int]) -> str:
    """What differs between two vocabularies, for the refusal: tokens one lacks, or the same token under two ids."""
    only = sorted(set(teacher) ^ set(student), key=lambda t: teacher.get(t, student.get(t)))
    if only:
        where = lambda t: "teacher only" if t in teacher else "student only"  # noqa: E731
        return ": " + ", ".join(f"{t!r} ({where(t)})" for t in only[:3]) + (f" and {len(only) - 3} more" if len(only) > 3 else "")
    moved = sorted((t for t in teacher if teacher[t] != student[t]), key=teacher.get)
    shown = ", ".join(f"{t!r} is {teacher[t]} in the teacher, {student[t]} in the student" for t in moved[:3])
    return f": the same tokens under other ids ({len(moved)} differ: {shown})"


def special_token_ids(tokenizer) -> dict[str, int]:
    """The named special tokens (bos, eos, pad, ...) and every added token marked special, with their ids."""
    named = {f"{name} {token!r}": tokenizer.convert_tokens_to_ids(token)
             for name, token in tokenizer.special_tokens_map.items() if isinstance(token, str)}
    added = {f"special {t.content!r}": i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return {**named, **added}


def check_special_tokens(where: str, teacher: dict[str, int], student: dict[str, int]) -> None:
    differ = sorted(k for k in teacher.keys() | student.keys() if teacher.get(k) != student.get(k))
    if differ:
        shown = "; ".join(f"{k}: teacher {teacher.get(k, 'none')}, student {student.get(k, 'none')}" for k in differ[:5])
        raise TeacherMismatch(f"{where} have different special-token ids ({shown}); the teacher scores the student's "
                              "token ids, so the special tokens must be the same")


def check_end_of_turn(where: str, tokenizer, teacher: set[int], student: set[int]) -> None:
    if teacher != student:
        name = lambda ids: ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)!r}" for i in sorted(ids)) or "none"  # noqa: E731
        raise TeacherMismatch(f"{where} end their turns with different tokens: teacher {{{name(teacher)}}}, student "
                              f"{{{name(student)}}} (generation_config.json eos_token_id and the tokenizer's eos); the "
                              "student learns where to stop from the teacher's log-prob of its end token")


def check_chat_template(where: str, tokenizer, student_tokenizer) -> None:
    for messages in TEMPLATE_PROBES:
        try:
            teacher_ids = prompt_ids(tokenizer, messages)
        except Exception as e:  # noqa: BLE001 — a missing or broken template; jinja raises many kinds
            raise TeacherMismatch(f"{where}: the teacher's chat template cannot render a prompt ({e})") from None
        student_ids = prompt_ids(student_tokenizer, messages)
        if teacher_ids != student_ids:
            at = next((i for i, (a, b) in enumerate(zip(teacher_ids, student_ids)) if a != b),
                      min(len(teacher_ids), len(student_ids)))
            show = lambda ids: repr(student_tokenizer.decode(ids[max(0, at - 8):at + 12]))  # noqa: E731
            raise TeacherMismatch(
                f"{where} have different chat templates: rendering {[m['role'] for m in messages]} they differ from "
                f"token {at}: teacher ...{show(teacher_ids)}..., student ...{show(student_ids)}...; the teacher scores "
                "prompts rendered with the student's template, so it would score a format it was not trained on")
