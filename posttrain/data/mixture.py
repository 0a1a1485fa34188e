"""Weighted data mixtures: `data_mixtures/*.yaml` → validated sources → one interleaved `datasets.Dataset`.

A mixture names its sources (a local jsonl/parquet path or a hub id), each with a format and a
weight. Every source is normalised to one schema — `id`, `source`, `messages` (role/content list),
`answer` — so the SFT and OPD stages see the same rows whatever the original layout. Bad rows are
refused before any training with the file and line (or row) that holds them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

FORMATS = ("messages", "prompt_completion", "prompt")
ROLES = ("system", "user", "assistant", "tool")
SOURCE_KEYS = ("name", "path", "hub", "split", "format", "weight", "category",
               "messages_field", "prompt_field", "completion_field", "answer_field", "id_field")


class DataError(ValueError):
    """A mixture file or one of its rows is not what the pipeline expects."""


@dataclass
class Source:
    name: str
    weight: float
    format: str
    path: Path | None = None  # local file
    hub: str | None = None  # or a hub dataset id
    split: str = "train"
    category: str | None = None
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    answer_field: str = "answer"
    id_field: str = "id"

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else f"hub:{self.hub}[{self.split}]"


@dataclass
class MixtureSpec:
    path: Path
    name: str
    seed: int
    sources: list[Source] = field(default_factory=list)

    def probabilities(self) -> list[float]:
        total = sum(s.weight for s in self.sources)
        return [s.weight / total for s in self.sources]


def load_mixture_spec(path: str | Path) -> MixtureSpec:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data mixture file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not raw["sources"]:
        raise DataError(f"{path}: expected a mapping with a non-empty 'sources' list")
    unknown = set(raw) - {"name", "seed", "sources"}
    if unknown:
        raise DataError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected name, seed, sources")
    spec = MixtureSpec(path=path, name=str(raw.get("name", path.stem)), seed=int(raw.get("seed", 0)))
    seen: set[str] = set()
    for i, entry in enumerate(raw["sources"]):
        where = f"{path}: sources[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected a mapping, got {entry!r}")
        bad = set(entry) - set(SOURCE_KEYS)
        if bad:
            raise DataError(f"{where}: unknown key(s) {sorted(bad)}; valid keys: {', '.join(SOURCE_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: 'name' is required")
        where = f"{path}: source '{name}'"
        if name in seen:
            raise DataError(f"{where}: duplicate source name '{name}' (names must be unique)")
        seen.add(name)
        weight = entry.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise DataError(f"{where}: 'weight' must be a finite number > 0, got {weight!r}")
        fmt = entry.get("format")
        if fmt not in FORMATS:
            raise DataError(f"{where}: 'format' must be one of {list(FORMATS)}, got {fmt!r}")
        if ("path" in entry) == ("hub" in entry):
            raise DataError(f"{where}: give exactly one of 'path' (local file) or 'hub' (dataset id)")
        local = None
        if "path" in entry:
            local = (path.parent / entry["path"]).resolve()
            if not local.exists():
                raise DataError(f"{where}: source file not found: {local}")
            if local.suffix not in (".jsonl", ".json", ".parquet"):
                raise DataError(f"{where}: {local.name}: expected a .jsonl, .json or .parquet file")
        spec.sources.append(Source(
            name=name, weight=float(weight), format=fmt, path=local, hub=entry.get("hub"),
            split=entry.get("split", "train"), category=entry.get("category"),
            **{k: entry[k] for k in ("messages_field", "prompt_field", "completion_field", "answer_field", "id_field") if k in entry},
        ))
    return spec


# --------------------------------------------------------------------------------------------------
# Rows: one schema for every format
# --------------------------------------------------------------------------------------------------


def normalise_row(row: dict, source: Source, where: str, index: int) -> dict:
    """Map a raw row of `source` onto {id, source, category, messages, answer}; raise on a bad row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if source.format == "messages":
        messages = row.get(source.messages_field)
        if messages is None:
            raise DataError(f"{where}: missing '{source.messages_field}' (format 'messages' needs a list of {{role, content}})")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: '{source.messages_field}' must be a non-empty list, got {messages!r:.80}")
        clean = []
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: message {j} must have 'role' and 'content'")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: message {j} has unknown role {m['role']!r}; expected one of {list(ROLES)}")
            if not isinstance(m["content"], str):
                raise DataError(f"{where}: message {j} content must be a string")
            if m["role"] == "assistant" and not m["content"].strip():
                raise DataError(f"{where}: message {j} is an empty assistant turn")
            clean.append({"role": m["role"], "content": m["content"]})
        messages = clean
    else:
        prompt = row.get(source.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: missing or empty '{source.prompt_field}' (format '{source.format}')")
        messages = [{"role": "user", "content": prompt}]
        if source.format == "prompt_completion":
            completion = row.get(source.completion_field)
            if not isinstance(completion, str) or not completion.strip():
                raise DataError(f"{where}: missing or empty '{source.completion_field}' (format 'prompt_completion')")
            messages.append({"role": "assistant", "content": completion})
    answer = row.get(source.answer_field)
    return {
        "id": str(row.get(source.id_field, f"{source.name}-{index}")),
        "source": source.name,
        "category": source.category or source.name,
        "messages": messages,
        "answer": None if answer is None else str(answer),
    }


def read_source_rows(source: Source) -> Iterator[dict]:
    """Normalised rows of one source; a local jsonl is read line by line so errors name the line."""
    if source.path is not None and source.path.suffix in (".jsonl", ".json"):
        try:
            lines = source.path.read_bytes().split(b"\n")
        except OSError as e:
            raise DataError(f"{source.path}: cannot read: {e}") from None
        index = 0
        for lineno, raw in enumerate(lines, start=1):
            where = f"{source.path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            yield normalise_row(row, source, where, index)
            index += 1
        return
    for index, row in enumerate(_load_raw_dataset(source)):
        yield normalise_row(row, source, f"{source.where}: row {index}", index)


def _load_raw_dataset(source: Source):
    import datasets

    if source.path is not None:
        kind = "parquet" if source.path.suffix == ".parquet" else "json"
        return datasets.load_dataset(kind, data_files=str(source.path), split="train")
    return datasets.load_dataset(source.hub, split=source.split)


def load_source(source: Source):
    """One source as a `datasets.Dataset` in the normalised schema, every row checked."""
    import datasets

    if source.path is not None and source.path.suffix in (".jsonl", ".json"):
        # Validate line by line first (errors name file:line), then let `datasets` load the file.
        rows = list(read_source_rows(source))
        if not rows:
            raise DataError(f"{source.path}: no rows")
        raw = _load_raw_dataset(source)
        ds = raw.map(lambda row, i: normalise_row(dict(row), source, f"{source.path}: row {i}", i),
                     with_indices=True, remove_columns=raw.column_names)
    else:
        raw = _load_raw_dataset(source)
        ds = raw.map(lambda row, i: normalise_row(dict(row), source, f"{source.where}: row {i}", i),
                     with_indices=True, remove_columns=raw.column_names)
        if len(ds) == 0:
            raise DataError(f"{source.where}: no rows")
    return ds.cast(datasets.Features(_features()))


def _features():
    import datasets

    return {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "category": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "answer": datasets.Value("string"),
    }


def load_mixture(spec: MixtureSpec, seed: int | None = None):
    """All sources interleaved by weight (`datasets.interleave_datasets`), deterministic from the seed.

    `all_exhausted` draws until every source has been seen whole once, so a small source with a
    large weight repeats rather than cutting the others short.
    """
    import datasets

    parts = [load_source(s) for s in spec.sources]
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(
        parts, probabilities=spec.probabilities(), seed=spec.seed if seed is None else seed,
        stopping_strategy="all_exhausted",
    )
