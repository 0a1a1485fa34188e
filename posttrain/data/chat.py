"""Conversations → token ids with an assistant-only loss mask, through the tokenizer's chat template.

The mask comes from the template itself: `apply_chat_template(..., return_assistant_tokens_mask=True)`
marks what lies inside `{% generation %}` blocks. Templates without those markers (the stock Qwen3
template has none) get the mask by rendering the conversation turn by turn and marking the tokens
each assistant turn adds — the same answer, written by hand only because the template cannot give it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is written by the assistant (a training target)
    truncated: bool = False


def has_generation_markers(tokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "{% generation %}" in template or "{%- generation %}" in template or "generation %}" in template


def tokenize_conversation(tokenizer, messages: list[dict]) -> TokenizedExample:
    if has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return TokenizedExample(list(out["input_ids"]), list(out["assistant_masks"]))
    return _tokenize_turn_by_turn(tokenizer, messages)


def _tokenize_turn_by_turn(tokenizer, messages: list[dict]) -> TokenizedExample:
    def ids(msgs, add_generation_prompt=False):
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=add_generation_prompt,
                                                  return_dict=True)["input_ids"])

    full = ids(messages)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(ids(messages[:i], add_generation_prompt=True))
        end = len(ids(messages[: i + 1]))
        if full[:end] != ids(messages[: i + 1]):
            raise ValueError("the chat template is not prefix-stable; add {% generation %} markers to it")
        # The turn ends at its end-of-turn token; what the template adds after it (a newline) is
        # template text, not something the assistant writes, as the `{% generation %}` markers say.
        span = full[start:end]
        if tokenizer.eos_token_id in span:
            end = start + len(span) - span[::-1].index(tokenizer.eos_token_id)
        for t in range(start, end):
            mask[t] = 1
    return TokenizedExample(full, mask)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a prompt ready for generation (the assistant header appended)."""
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])


def fit_to_length(example: TokenizedExample, max_len: int, policy: str) -> TokenizedExample | None:
    """Apply the over-length policy: `truncate` keeps the first `max_len` tokens, `drop` returns None.

    A truncated example that keeps no assistant token teaches nothing and is dropped (the caller
    counts both outcomes).
    """
    if len(example.input_ids) <= max_len:
        return example
    if policy == "drop":
        return None
    cut = TokenizedExample(example.input_ids[:max_len], example.loss_mask[:max_len], truncated=True)
    return cut if any(cut.loss_mask) else None
