import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models.tiny import QWEN3_SPECIAL_TOKENS


def test_suite_loads_with_plain_transformers_and_shares_one_vocabulary(tiny_models):
    vocabularies = set()
    for name, path in tiny_models.items():
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        vocabularies.add((model.config.vocab_size, json.dumps(tokenizer.get_vocab(), sort_keys=True)))
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
    assert len(vocabularies) == 1
    types = {AutoModelForCausalLM.from_pretrained(p).config.model_type for p in tiny_models.values()}
    assert types == {"qwen3_moe", "qwen3_next"}


def test_student_is_a_tied_top_k_moe(tiny_models):
    config = AutoModelForCausalLM.from_pretrained(tiny_models["student"]).config
    assert config.tie_word_embeddings and config.num_experts > config.num_experts_per_tok > 1


def test_tokenizer_has_qwen3_special_tokens_and_generation_markers(tokenizer):
    for token in QWEN3_SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    assert "{%- generation %}" in tokenizer.chat_template


def test_build_is_deterministic_from_the_seed(tiny_models):
    """Tokenizer, initial weights and the teachers' warm-up are all functions of the seed (a few
    warm-up steps stand in for the full build, which takes a minute)."""
    from posttrain.models import tiny

    tokenizer = tiny.build_tokenizer()
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_models["student"]).get_vocab()
    vocab = tiny._padded_vocab(tokenizer)
    for make_config in (tiny.teacher_moe_config, tiny.teacher_next_config):
        weights = []
        for _ in range(2):
            torch.manual_seed(7)
            model = AutoModelForCausalLM.from_config(make_config(vocab, tokenizer))
            tiny.warm_up(model, tokenizer, steps=2, seed=7)
            weights.append(model.state_dict())
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
