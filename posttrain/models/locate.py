"""Where a model comes from, and whether it holds what a run needs.

One rule for every place that takes a model (the stages' `model.path`, the cascade's teachers,
`posttrain eval`): a path that exists is local; otherwise it is a hub id only if it has the hub's
`org/name` shape — one slash, not absolute, not starting with `.` or `~`. Anything else names a
local directory that is not there, and is refused before any work with the field that named it.

A local model directory is checked whole before any work (`check_model_dir`): a missing weight
file, tokenizer or chat template otherwise surfaces minutes later as a library traceback inside a
Ray actor, without the path.
"""

from __future__ import annotations

import json
from pathlib import Path

# What transformers' from_pretrained reads weights from (one file, or an index of shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelError(ValueError):
    """A model directory is missing or lacks a part a run needs (config, weights, tokenizer, chat template)."""


def is_hub_id(path: str) -> bool:
    """`org/name` and not an existing local path (e.g. Qwen/Qwen3-30B-A3B-Instruct-2507)."""
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def require_model(path: str, field: str, hint: str = "") -> None:
    """Refuse `path` (named by `field`, e.g. `model.path`) unless it is a local path or a hub id."""
    if Path(path).exists() or is_hub_id(path):
        return
    raise ModelError(hint or f"{field}: {path} does not exist (expected a local directory or a hub id org/name)")


def check_model_dir(path: str, field: str, trust_remote_code: bool = False, hint: str = "", need_template: bool = True):
    """The model's tokenizer, after checking that a local directory holds config.json, weights, a
    tokenizer with a chat template, and an embedding that covers the tokenizer's vocabulary.

    A hub id is left to transformers (nothing is downloaded here to check it); its tokenizer is loaded.
    """
    from transformers import AutoConfig, AutoTokenizer

    require_model(path, field, hint)
    local = Path(path)
    if local.exists():
        _check_files(local, field)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{field}: {path}: transformers cannot load its tokenizer or config ({first})") from None
    if need_template and not tokenizer.chat_template:
        raise ModelError(f"{field}: the tokenizer of {path} has no chat template (tokenizer_config.json 'chat_template' "
                         "or chat_template.jinja); every example is formatted with it, so add one (a base model needs "
                         "the template of its instruct sibling: model.chat_template_from names the model to take it from)")
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelError(f"{field}: the tokenizer of {path} has {len(tokenizer)} tokens, more than the model's embedding "
                         f"(config.json vocab_size {vocab_size}): token ids past {vocab_size - 1} would index outside it")
    # Fewer tokens than rows is legal — embeddings are padded past their tokenizer (Qwen3: 151,669
    # tokens, 151,936 rows) — but one that reaches under 90% of the rows is probably not the model's own.
    if vocab_size is not None and len(tokenizer) < 0.9 * vocab_size:
        print(f"[posttrain] note: {field} {path}: the tokenizer has {len(tokenizer):,} tokens, the embedding {vocab_size:,} "
              f"rows; rows {len(tokenizer):,}.. are padding no text produces (the model can still sample them)", flush=True)
    return tokenizer


def _check_files(path: Path, field: str) -> None:
    if not path.is_dir():
        raise ModelError(f"{field}: {path} is a file; expected a model directory (config.json, weights, tokenizer)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{field}: {path} has no config.json; expected a Hugging Face model directory "
                         "(config.json, weights, tokenizer)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{field}: {path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ModelError(f"{field}: {path} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    for weights in safetensors_files(path, field):
        check_safetensors(weights, field)


def safetensors_files(path: Path, field: str) -> list[Path]:
    """The directory's safetensors files: `model.safetensors`, or the shards its index names (each must exist)."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return []
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"{field}: {index} is not a safetensors index (a JSON object with a 'weight_map')") from None
    missing = [name for name in shards if not (path / name).is_file()]
    if missing:
        raise ModelError(f"{field}: {index} names shard(s) that are not there: {', '.join(missing[:3])}")
    return [path / name for name in shards]


def check_safetensors(file: Path, field: str) -> None:
    """A safetensors file whose header reads and whose tensors' byte ranges end exactly at the file's end: what a
    cut or empty copy fails, found in a millisecond (the header is read, not the weights). The layout is
    safetensors' own: an 8-byte little-endian header length, the JSON header, then the tensors' bytes."""
    size = file.stat().st_size
    where = f"{field}: {file}"
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{where}: {size} bytes, too short for a safetensors file (empty or cut short); copy it again")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise ModelError(f"{where}: the header says {length:,} bytes but the file has {size:,}: it is cut short or "
                             "not a safetensors file; copy it again")
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            raise ModelError(f"{where}: its header is not a safetensors header (the file is damaged); copy it again") from None
    if 8 + length + end != size:
        raise ModelError(f"{where}: the tensors need {8 + length + end:,} bytes but the file has {size:,} (cut short or "
                         "damaged); copy it again")
