"""A model directory is checked whole before any work, with the field and the path in the message."""

import json
import shutil

import pytest

from posttrain.models.locate import ModelError, check_model_dir


def test_a_model_dir_missing_a_part_or_too_small_an_embedding_is_named(tiny_models, tmp_path):
    good = tiny_models["student"]
    assert len(check_model_dir(str(good), "model.path")) > 0  # the whole directory passes, its tokenizer comes back

    def copy(name, drop=()):
        broken = tmp_path / name
        shutil.copytree(good, broken)
        for part in drop:
            (broken / part).unlink()
        return broken

    small = copy("small_embedding")
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    a_file = tmp_path / "a_file"
    a_file.write_text("weights?")
    tokenizer_files = [p.name for p in good.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))]
    cases = {
        a_file: rf"teacher: {a_file} is a file; expected a model directory",
        copy("no_config", ["config.json"]): r"teacher: .*/no_config has no config\.json",
        copy("no_tokenizer", tokenizer_files): r"teacher: .*/no_tokenizer has no tokenizer",
        small: rf"teacher: the tokenizer of {small} has \d+ tokens, more than the model's embedding "
               r"\(config\.json vocab_size 100\)",
    }
    for path, message in cases.items():
        with pytest.raises(ModelError, match=message):
            check_model_dir(str(path), "teacher")
