"""What OPD checks before it starts any worker: the cascade and one shared vocabulary."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import ConfigError, OPDConfig


class VocabularyMismatch(ValueError):
    """A teacher does not share the student's vocabulary, so it cannot score the student's tokens."""


def check_budgets(cfg: OPDConfig) -> None:
    """A whole prompt + response must fit one packed micro-batch; a sample is never split."""
    longest = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    if cfg.data.pack_tokens < longest:
        raise ConfigError(
            f"data.pack_tokens ({cfg.data.pack_tokens}) must be >= data.max_prompt_len + rollout.max_new_tokens "
            f"({cfg.data.max_prompt_len} + {cfg.rollout.max_new_tokens} = {longest})"
        )


def check_student(cfg: OPDConfig) -> None:
    """The student must exist; the default is the SFT stage's export, so say how to make it."""
    path = Path(cfg.model.path)
    if path.exists() or (path.name in ("student",) and cfg.model.build_tiny_if_missing):
        return
    if not path.is_absolute() and cfg.model.path.count("/") == 1 and not cfg.model.path.startswith("."):
        return  # a hub id: transformers resolves it
    raise FileNotFoundError(
        f"model.path: the student {cfg.model.path} does not exist. The default student is the SFT stage's "
        f"export: run `posttrain sft --config configs/tiny/sft.yaml --output-dir {path.parent}` first, "
        "or pass --student PATH (a local HF model directory or a hub id)"
    )


def check_cascade(cfg: OPDConfig, student_tokenizer) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from posttrain.models.tiny import ensure_model

    if not cfg.teachers:
        raise ConfigError("teachers: the cascade is empty; give at least one teacher (config or --teacher PATH[:STEPS])")
    student_config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    student_vocab = student_tokenizer.get_vocab()
    for i, stage in enumerate(cfg.teachers):
        if stage.steps <= 0:
            raise ConfigError(f"teachers[{i}] ({stage.path}): steps must be > 0, got {stage.steps}")
        ensure_model(stage.path, cfg.model.build_tiny_if_missing, cfg.model.tiny_seed)
        if not Path(stage.path).exists() and stage.path.count("/") != 1:
            raise FileNotFoundError(f"teachers[{i}]: {stage.path} does not exist (expected a local directory or a hub id)")
        tokenizer = AutoTokenizer.from_pretrained(stage.path, trust_remote_code=cfg.model.trust_remote_code)
        config = AutoConfig.from_pretrained(stage.path, trust_remote_code=cfg.model.trust_remote_code)
        if tokenizer.get_vocab() != student_vocab or config.vocab_size < len(student_tokenizer):
            raise VocabularyMismatch(
                f"teacher {stage.path} has a vocabulary of {len(tokenizer)} tokens (embedding {config.vocab_size}), "
                f"the student {cfg.model.path} has {len(student_tokenizer)} tokens (embedding {student_config.vocab_size}); "
                "the teacher scores the student's own token ids, so both must use the same tokenizer"
            )
