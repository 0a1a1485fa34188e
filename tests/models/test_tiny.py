import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models.tiny import QWEN3_SPECIAL_TOKENS, build_tiny_suite


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


def test_build_is_deterministic_from_the_seed(tiny_models, tmp_path):
    again = build_tiny_suite(tmp_path / "tiny", seed=0)
    for name in tiny_models:
        a = load_file(tiny_models[name] / "model.safetensors")
        b = load_file(again[name] / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_models["student"] / "tokenizer.json").read_text() == (again["student"] / "tokenizer.json").read_text()
