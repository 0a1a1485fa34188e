"""A student's chat format taken from another model (`model.chat_template_from`): its chat template, its special
tokens (end of turn, padding) and its generation config.

Why: OPD's teachers score the student's tokens in their own format (`posttrain.stages.opd.checks` refuses any
other), but a Base model ships its pretraining conventions (Qwen3-Base: `<|endoftext|>` ends a turn, a template
with thinking blocks) or none at all. The student must be fine-tuned in the format its teachers score, so the SFT
stage trains with the named model's format and exports it with the weights (`final/` then speaks it to OPD,
transformers and vLLM alike). transformers can copy a template but has no step that moves a whole chat format
between two tokenizers of one vocabulary, so this is the project's own, in one place for the driver (the data)
and the trainer (the export).
"""

from __future__ import annotations

from posttrain.models.locate import ModelError

FIELD = "model.chat_template_from"
TOKENS = ("eos_token", "pad_token", "bos_token")  # the named special tokens the format fixes


def adopt_chat_format(tokenizer, source: str, trust_remote_code: bool = False):
    """`tokenizer` with `source`'s chat template and named special tokens; the vocabularies must be the same."""
    from transformers import AutoTokenizer

    try:
        donor = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{FIELD}: {source}: transformers cannot load its tokenizer ({first})") from None
    if not donor.chat_template:
        raise ModelError(f"{FIELD}: {source} has no chat template to take")
    if donor.get_vocab() != tokenizer.get_vocab():
        raise ModelError(f"{FIELD}: {source} has another vocabulary ({len(donor):,} tokens; the student's "
                         f"{len(tokenizer):,}): a chat format names token ids, so it moves only between one tokenizer's models")
    tokenizer.chat_template = donor.chat_template
    for name in TOKENS:
        token = getattr(donor, name)
        if token is not None:
            setattr(tokenizer, name, str(token))
    return tokenizer


def donor_generation_config(source: str):
    """`source`'s generation config (its end-of-turn ids and decoding defaults), or None where it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:
        return None


def export_tokenizer(model_cfg):
    """The tokenizer the SFT export ships: the student's own, in `model.chat_template_from`'s format when set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.chat_template_from:
        tokenizer = adopt_chat_format(tokenizer, model_cfg.chat_template_from, model_cfg.trust_remote_code)
    return tokenizer
