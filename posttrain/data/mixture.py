"""Weighted data mixtures: `data_mixtures/*.yaml` → validated sources → one interleaved `datasets.Dataset`.

A mixture names its sources (a local jsonl/parquet path or a hub id, with its subset and split), each
with a format, a weight and optionally how many of its rows one epoch uses. Every source is
normalised to one schema (`posttrain.data.rows`) so the SFT and OPD stages see the same rows whatever
the original layout. Bad rows are refused before any training with the file and line (or row) that
holds them. A source the card names but nobody can download (`private:`) is a slot: the run stops
before loading anything until a user points it at their own data.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from posttrain.config import strict_yaml
from posttrain.data.rows import DataError, normalise_row

FORMATS = ("messages", "prompt_completion", "prompt")
FIELD_KEYS = ("messages_field", "prompt_field", "completion_field", "answer_field", "id_field")
SOURCE_KEYS = ("name", "path", "hub", "subset", "split", "format", "weight", "category", *FIELD_KEYS,
               "size", "take", "private")
# A directory that mirrors hub datasets as <dir>/<org>/<name> (a local copy of the dataset's repository, e.g.
# `huggingface-cli download --repo-type dataset org/name --local-dir <dir>/org/name`): a hub source found
# there is loaded from it with the same `datasets.load_dataset` call, its subset and split; others from the hub.
HUB_MIRROR_ENV = "POSTTRAIN_HUB_MIRROR"

__all__ = ["DataError", "MixtureSpec", "Source", "epoch_rows", "load_mixture", "load_mixture_spec", "load_source",
           "read_source_rows"]


@dataclass
class Source:
    name: str
    weight: float
    format: str
    path: Path | None = None  # local file
    hub: str | None = None  # or a hub dataset id
    subset: str | None = None  # the hub dataset's config name (load_dataset's `name`)
    split: str = "train"  # several joined by "+" (a list in the YAML)
    category: str | None = None
    messages_field: str = "messages"  # field names are dotted paths into nested columns
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    answer_field: str = "answer"
    id_field: str = "id"
    size: int | None = None  # rows the source has (its card's count), for planning without loading it
    take: int | float | None = None  # rows one epoch uses: a count, or a fraction in (0, 1]; None: all
    private: str | None = None  # a slot for data that is not public: what it holds, until `path` points at it

    @property
    def where(self) -> str:
        if self.path is not None:
            return str(self.path)
        subset = f"/{self.subset}" if self.subset else ""
        return f"hub:{self.hub}{subset}[{self.split}]"


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
    raw = strict_yaml(path.read_text(encoding="utf-8"), path, DataError)
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not raw["sources"]:
        raise DataError(f"{path}: expected a mapping with a non-empty 'sources' list")
    unknown = set(raw) - {"name", "seed", "sources"}
    if unknown:
        raise DataError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected name, seed, sources")
    spec = MixtureSpec(path=path, name=str(raw.get("name", path.stem)), seed=int(raw.get("seed", 0)))
    seen: set[str] = set()
    for i, entry in enumerate(raw["sources"]):
        source = _source(entry, path, f"{path}: sources[{i}]", seen)
        spec.sources.append(source)
    return spec


def _source(entry, path: Path, where: str, seen: set[str]) -> Source:
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
    private = entry.get("private")
    if private is not None and (not isinstance(private, str) or not private.strip()):
        raise DataError(f"{where}: 'private' describes the data the slot stands for, got {private!r}")
    if (entry.get("path") is None) == (entry.get("hub") is None) and not (private and entry.get("path") is None
                                                                          and entry.get("hub") is None):
        raise DataError(f"{where}: give exactly one of 'path' (local file) or 'hub' (dataset id)")
    local = None
    if entry.get("path") is not None:
        local = (path.parent / entry["path"]).resolve()
        if not local.exists():
            raise DataError(f"{where}: source file not found: {local}")
        if local.suffix not in (".jsonl", ".json", ".parquet"):
            raise DataError(f"{where}: {local.name}: expected a .jsonl, .json or .parquet file")
    size, take = entry.get("size"), entry.get("take")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise DataError(f"{where}: 'size' is the source's row count, a whole number > 0, got {size!r}")
    if take is not None and (isinstance(take, bool) or not isinstance(take, (int, float))
                             or (isinstance(take, int) and take <= 0) or (isinstance(take, float) and not 0 < take <= 1)):
        raise DataError(f"{where}: 'take' is the rows one epoch uses: a whole number > 0 or a fraction in (0, 1], "
                        f"got {take!r}")
    split = entry.get("split", "train")
    if isinstance(split, list) and split and all(isinstance(x, str) for x in split):
        split = "+".join(split)  # several splits read as one source: datasets' split arithmetic
    for key, value in [("split", split)] + [(k, entry[k]) for k in ("hub", "subset", "category", *FIELD_KEYS) if k in entry]:
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: '{key}' must be a non-empty string{' (or a list of split names)' if key == 'split' else ''}, "
                            f"got {value!r}")
    return Source(
        name=name, weight=float(weight), format=fmt, path=local, hub=entry.get("hub"), subset=entry.get("subset"),
        split=split, category=entry.get("category"), size=size, take=take, private=private,
        **{k: entry[k] for k in FIELD_KEYS if k in entry},
    )


def check_slots(spec: MixtureSpec) -> None:
    """A `private:` source nobody has pointed at data yet stops the run here, before any source loads."""
    for source in spec.sources:
        if source.path is None and source.hub is None:
            raise DataError(
                f"{spec.path}: source '{source.name}' is a slot for data that is not public ({source.private.strip()}); "
                f"point it at your own: give it `path: your_file.jsonl` (format '{source.format}', "
                f"data_mixtures/README.md) in a copy of {spec.path.name}, or leave the source out of the copy")


def epoch_rows(spec: MixtureSpec) -> tuple[int | None, str]:
    """How many rows one epoch of the mixture draws, from the sources' `take`/`size` (local files are
    counted), without loading any: (rows, how it was derived) or (None, why it cannot be told).

    `interleave_datasets(..., stopping_strategy="all_exhausted")` draws until every source has been
    seen whole, so an epoch is about max over sources of rows_i / share_i (= the sum of the rows when the
    weights follow the rows). An estimate: the draw is random, and the length policy drops rows later.
    """
    used = []
    for source in spec.sources:
        rows = _rows_used(source)
        if rows is None:
            return None, (f"source '{source.name}' gives neither 'size' nor a 'take' count, so the epoch's length is "
                          "known only once it is loaded")
        used.append(rows)
    shares = spec.probabilities()
    total = max(rows / share for rows, share in zip(used, shares))
    how = (f"{spec.path.name}: {sum(used):,} rows over {len(used)} sources (their take/size), drawn by weight until each "
           f"is seen whole: ~{total:,.0f} rows per epoch")
    return round(total), how


def _rows_used(source: Source) -> int | None:
    size = source.size
    if size is None and source.path is not None:
        size = _count_local_rows(source.path)
    if isinstance(source.take, int) and not isinstance(source.take, bool):
        return source.take if size is None else min(source.take, size)
    if source.take is not None:
        return None if size is None else max(1, round(source.take * size))
    return size


def _count_local_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


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
        try:
            if kind == "parquet":  # its footer read first: a damaged file is named here, not in datasets' logs
                import pyarrow.parquet as pq

                pq.read_schema(source.path)
            return datasets.load_dataset(kind, data_files=str(source.path), split="train")
        except Exception as e:  # noqa: BLE001 — pyarrow and datasets raise many kinds for an unreadable file
            raise DataError(f"{source.path}: source '{source.name}': cannot read it as {kind} ({_first_line(e)})") from None
    location, mirrored = hub_location(source.hub)
    try:
        return datasets.load_dataset(location, name=source.subset, split=source.split)
    except Exception as e:  # noqa: BLE001 — offline, unknown id, subset or split: datasets raises many kinds
        fix = ("check the copy's layout against the dataset's card" if mirrored else
               f"with no hub access, put a local copy of the dataset's repository at $POSTTRAIN_HUB_MIRROR/{source.hub} "
               f"({HUB_MIRROR_ENV}, data_mixtures/README.md)")
        raise DataError(f"{source.where}: source '{source.name}': cannot load {location} ({_first_line(e)}); {fix}") from None


def hub_location(hub: str) -> tuple[str, bool]:
    """Where `load_dataset` reads a hub id from: the mirror's copy when there is one, else the hub."""
    mirror = os.environ.get(HUB_MIRROR_ENV)
    if mirror and (Path(mirror) / hub).is_dir():
        return str(Path(mirror) / hub), True
    return hub, False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _take(raw, source: Source, seed: int):
    """The rows one epoch uses (`take`): a seeded sample of the source, in the source's order."""
    if source.take is None:
        return raw
    want = source.take if isinstance(source.take, int) else max(1, round(source.take * len(raw)))
    if want >= len(raw):
        if want > len(raw):
            print(f"[data] source '{source.name}': take {want:,} but it has {len(raw):,} rows; all are used", flush=True)
        return raw
    picked = sorted(random.Random(f"{seed}:{source.name}").sample(range(len(raw)), want))
    print(f"[data] source '{source.name}': {want:,} of its {len(raw):,} rows (take)", flush=True)
    return raw.select(picked)


def load_source(source: Source, seed: int = 0):
    """One source as a `datasets.Dataset` in the normalised schema, every row it uses checked."""
    import datasets

    if source.path is not None and source.path.suffix in (".jsonl", ".json"):
        # Validate line by line first (errors name file:line), then let `datasets` load the file.
        rows = list(read_source_rows(source))
        if not rows:
            raise DataError(f"{source.path}: no rows")
        where = str(source.path)
    else:
        where = source.where
    raw = _take(_load_raw_dataset(source), source, seed)
    # The schema is given to `map` itself: a column the source already has under an output's name (`messages` with
    # extra per-message keys, say) would otherwise lend the output its own type.
    ds = raw.map(lambda row, i: normalise_row(dict(row), source, f"{where}: row {i}", i),
                 with_indices=True, remove_columns=raw.column_names, features=datasets.Features(_features()))
    if len(ds) == 0:
        raise DataError(f"{where}: no rows")
    return ds


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

    check_slots(spec)
    seed = spec.seed if seed is None else seed
    parts = [load_source(s, seed) for s in spec.sources]
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(
        parts, probabilities=spec.probabilities(), seed=seed,
        stopping_strategy="all_exhausted",
    )
