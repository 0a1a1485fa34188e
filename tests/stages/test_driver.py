"""What both stages' drivers do alike: here, the tokenizer checked against the model's embedding."""

import shutil

import pytest
from transformers import AutoConfig

from posttrain.config import ModelConfig
from posttrain.models.locate import ModelError
from posttrain.stages.driver import load_tokenizer


def model_with_rows(tiny_models, tmp_path, rows: int) -> str:
    """The tiny student with an embedding of `rows` rows in its config (the weights are never read)."""
    path = tmp_path / f"rows-{rows}"
    shutil.copytree(tiny_models["student"], path)
    config = AutoConfig.from_pretrained(path)
    config.vocab_size = rows
    config.save_pretrained(path)
    return str(path)


def test_a_tokenizer_larger_than_the_embedding_is_refused_with_both_sizes(tiny_models, tokenizer, tmp_path):
    path = model_with_rows(tiny_models, tmp_path, 1000)
    with pytest.raises(ModelError, match=rf"has {len(tokenizer)} tokens, more than the model's embedding \(config.json vocab_size 1000\)"):
        load_tokenizer(ModelConfig(path=path))


def test_a_much_smaller_tokenizer_is_legal_padding_with_a_note(tiny_models, tokenizer, tmp_path, capsys):
    load_tokenizer(ModelConfig(path=model_with_rows(tiny_models, tmp_path, 151936)))
    assert f"the tokenizer has {len(tokenizer):,} tokens, the embedding 151,936 rows" in capsys.readouterr().out
    load_tokenizer(ModelConfig(path=str(tiny_models["student"])))  # padded to a multiple of 64: no note
    assert "note" not in capsys.readouterr().out
