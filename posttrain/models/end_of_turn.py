"""The token ids that end a model's turn: where a rollout stops (hf and vLLM samplers alike) and what
OPD checks the teacher against the student with. One rule, so the samplers and the check cannot drift.

The rule is transformers' own: the generation config's `eos_token_id` (an int or a list; from
`generation_config.json`, or derived from the model's config when there is none), plus the tokenizer's
eos token, which chat templates end an assistant turn with.
"""

from __future__ import annotations


def end_of_turn_ids(generation_config, tokenizer) -> set[int]:
    """The end ids of a loaded `GenerationConfig` (e.g. `model.generation_config`) and tokenizer."""
    eos = generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def model_end_of_turn_ids(model_path: str, tokenizer, trust_remote_code: bool = False) -> set[int]:
    """The same, read from a model directory without loading its weights."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json: transformers derives it from the model's config
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code))
    return end_of_turn_ids(generation, tokenizer)
