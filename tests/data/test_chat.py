from posttrain.data.chat import _tokenize_turn_by_turn, fit_to_length, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "Hi again."},
]


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION)
    target = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m])
    assert target == "Hi.<|im_end|>Hi again.<|im_end|>"
    prompt_side = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if not m])
    assert "Say hi." in prompt_side and "Again?" in prompt_side and "Hi again" not in prompt_side


def test_turn_by_turn_fallback_matches_the_template_markers(tokenizer):
    marked = tokenize_conversation(tokenizer, CONVERSATION)
    fallback = _tokenize_turn_by_turn(tokenizer, CONVERSATION)
    assert fallback.input_ids == marked.input_ids and fallback.loss_mask == marked.loss_mask


def test_overlong_policy(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION)
    n = len(example.input_ids)
    assert fit_to_length(example, n - 3, "drop") is None
    cut = fit_to_length(example, n - 3, "truncate")
    assert cut.truncated and len(cut.input_ids) == n - 3
    prompt_len = example.loss_mask.index(1)
    assert fit_to_length(example, prompt_len, "truncate") is None  # nothing left to learn from
