"""Plan a suite into cells. A cell is one defense x attack x attack mode x scenario x seed (x probe case);
its id hashes its configuration, the code that computes it and the data. Cells that share a simulation
(defense x scenario x seed) form a group. Everything is validated here, before any work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.config import (
    ComponentSpec,
    ConfigError,
    ScenarioConfig,
    SuiteConfig,
    field_names,
    merge,
    params_from_dict,
    parse_value,
    scenario_key,
    set_path,
    stable_hash,
    to_dict,
)
from benchmark.contract.registry import Registry
from benchmark.contract.stacks import SEP, Stack, resolve_stack
from benchmark.running.catalog import resolve_scenario


@dataclass(frozen=True)
class Overrides:
    """``--set`` overrides split by what they address."""

    scenario: dict[str, Any]
    defense: dict[str, dict[str, Any]]
    attack: dict[str, dict[str, Any]]


def parse_overrides(items: Sequence[str]) -> Overrides:
    """``key=value`` items: ``scenario.<field>`` (or a bare scenario field), ``defense.<label>.<param>``,
    ``attack.<label>.<param>``. Values are TOML literals; unknown keys fail with the valid keys."""
    out = Overrides({}, {}, {})
    scenario_fields = field_names(ScenarioConfig)
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = parse_value(raw.strip())
        except ConfigError as exc:
            raise ConfigError(f"--set {key}: {exc}") from None
        head, _, rest = key.partition(".")
        if head in ("defense", "attack"):
            label, _, param = rest.partition(".")
            if not label or not param:
                raise ConfigError(f"--set {key!r}: expected {head}.<name>.<parameter>=value")
            target = out.defense if head == "defense" else out.attack
            set_path(target.setdefault(label, {}), param, value)
            continue
        path = rest if head == "scenario" else key
        if path in ("name", "description"):
            raise ConfigError(f"--set {key}: a scenario's name is its label in the suite; "
                              "use a suite entry like {{ name = \"tiny\", label = \"my_label\" }} instead")
        if path.split(".")[0] not in scenario_fields:
            raise ConfigError(
                f"unknown key {key!r}; valid keys: scenario.<{'|'.join(scenario_fields)}>, "
                "defense.<name>.<param>, attack.<name>.<param>"
            )
        set_path(out.scenario, path, value)
    return out


@dataclass(frozen=True)
class Cell:
    cell_id: str  # hash of key, code and data: what the row's numbers depend on
    scenario: str
    defense: ComponentSpec
    attack: ComponentSpec | None
    mode: str
    seed: int
    key: str = ""  # hash of the configuration alone: the same cell across code and data changes
    code_fp: str = ""
    data_fp: str = ""
    probe: tuple[int, int] | None = None  # (batch size, private batch index) of a probe attack's case


@dataclass(frozen=True)
class Group:
    """One simulation (defense x scenario x seed) and the cells that read its results."""

    scenario: ScenarioConfig
    defense: ComponentSpec
    seed: int
    cells: tuple[Cell, ...]


def _component(registry: Registry, spec: ComponentSpec, extra: Mapping[str, Any], kind: str) -> tuple[type, Any]:
    cls = registry.get(spec.name)
    params = merge(spec.params, extra)
    return cls, params_from_dict(cls.Params, params, f"{kind}.{spec.label}")


def check_suite(suite: SuiteConfig) -> None:
    """Lists a run is made of: none empty, no duplicates, seeds in range (the CLI can bypass the TOML checks)."""
    from benchmark.config import check_seed, check_unique

    for what, items in (("scenarios", suite.scenarios), ("defenses", suite.defenses), ("seeds", suite.seeds)):
        if not items:
            raise ConfigError(f"suite {suite.name!r}: {what} is empty; list at least one")
    if suite.attacks and not suite.attack_modes:
        raise ConfigError(f"suite {suite.name!r}: attack_modes is empty but attacks are listed; use naive and/or adaptive")
    check_unique("scenario labels", [s.label for s in suite.scenarios])
    check_unique("defense labels", [d.label for d in suite.defenses])
    check_unique("attack labels", [a.label for a in suite.attacks])
    check_unique("attack modes", list(suite.attack_modes))
    check_unique("seeds", list(suite.seeds))
    for seed in suite.seeds:
        check_seed("seeds", seed)


def check_scenario_inputs(scenario: ScenarioConfig) -> None:
    """The model and data a scenario names exist and are readable, before any work starts."""
    if scenario.kind != "federated":
        return
    from benchmark.federation.data import check_data
    from benchmark.federation.models import MODELS

    model = scenario.model
    if model.path:
        folder = Path(model.path)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.path {model.path!r} is not a transformers model folder (no config.json)")
    elif model.name not in MODELS:
        MODELS.get(model.name)  # raises with "did you mean" and the valid names
    check_data(scenario.data, scenario.task, scenario.n_clients)


def plan(suite: SuiteConfig, overrides: Overrides) -> list[Group]:
    """Resolve every scenario, defense and attack (validating all parameters, the model and the data)
    into groups of cells. A cell's id covers its configuration, the code that computes it and the data."""
    from benchmark.contract.plugins import ATTACKS
    from benchmark.running import fingerprint, validate

    check_suite(suite)
    for label in overrides.defense:
        if label not in {d.label for d in suite.defenses}:
            raise ConfigError(f"--set defense.{label}: no such defense in this run; valid: {', '.join(d.label for d in suite.defenses)}")
    for label in overrides.attack:
        if label not in {a.label for a in suite.attacks}:
            raise ConfigError(f"--set attack.{label}: no such attack in this run; valid: {', '.join(a.label for a in suite.attacks) or 'none'}")
    defenses = [ComponentSpec(d.name, d.label, merge(d.params, overrides.defense.get(d.label, {}))) for d in suite.defenses]
    attacks = [ComponentSpec(a.name, a.label, merge(a.params, overrides.attack.get(a.label, {}))) for a in suite.attacks]
    stacks = {d.label: defense_stack(d) for d in defenses}
    for a in attacks:
        for mode in suite.attack_modes:
            _component(ATTACKS, a, {"mode": mode}, "attack")
    groups = []
    for spec in suite.scenarios:
        scen_over = merge(merge(spec.overrides, suite.scenario_overrides.get(spec.label, {})), overrides.scenario)
        if suite.engine is not None and "engine" not in overrides.scenario:
            scen_over = merge(scen_over, {"engine": suite.engine})
        scenario = resolve_scenario(spec.ref, {**scen_over, "name": spec.label})
        for kind, only, present in (("attacks", spec.attacks, attacks), ("defenses", spec.defenses, defenses)):
            unknown = [x for x in only or () if x not in {c.label for c in present}]
            if unknown:
                raise ConfigError(f"scenario {spec.label!r}: {kind} {unknown} are not in this run's {kind} "
                                  f"({', '.join(c.label for c in present) or 'none'})")
        check_scenario_inputs(scenario)
        validate.check_planned(scenario, spec, suite, stacks, attacks)
        data_fp = fingerprint.combine(fingerprint.data_inputs(scenario))
        for seed in spec.seeds or suite.seeds:
            for d in (d for d in defenses if spec.defenses is None or d.label in spec.defenses):
                pairs: list[tuple[ComponentSpec | None, str, tuple[int, int] | None]] = []
                chosen = [a for a in attacks if spec.attacks is None or a.label in spec.attacks]
                if scenario.kind == "federated" and chosen:
                    pairs = [(a, m, case) for a in chosen for m in suite.attack_modes for case in _cases(ATTACKS, a, scenario)]
                if not pairs:
                    pairs = [(None, "", None)]
                cells = []
                for a, m, case in pairs:
                    versions = _defense_versions(d, stacks[d.label]) + ([str(ATTACKS.get(a.name).version)] if a else [])
                    key = stable_hash({"scenario": scenario_key(scenario), "defense": to_dict(d), "attack": to_dict(a) if a else None,
                                       "mode": m, "seed": seed, "versions": versions,
                                       "probe": list(case) if case else None})
                    code_fp = fingerprint.combine(fingerprint.file_hashes(
                        cell_files(stacks[d.label], ATTACKS.target(a.name) if a else None, scenario.engine)))
                    cell_id = stable_hash({"key": key, "code": code_fp, "data": data_fp})
                    cells.append(Cell(cell_id, scenario.name, d, a, m, seed, key, code_fp, data_fp, case))
                groups.append(Group(scenario, d, seed, tuple(cells)))
    return groups


def _cases(attacks: Registry, spec: ComponentSpec, scenario: ScenarioConfig) -> list[tuple[int, int] | None]:
    """A probe attack has one cell per probe case (batch size x private batch); a round attack one."""
    from benchmark.federation.probe import probe_keys

    return list(probe_keys(scenario)) if attacks.get(spec.name).target == "probe" else [None]


def defense_stack(spec: ComponentSpec) -> Stack:
    """The suite entry's defense, resolved (a stack such as ``dp+she_lora`` or one registered name) and
    its parameters validated; nothing is built."""
    from benchmark.contract.plugins import DEFENSES

    return resolve_stack(spec.name, spec.params, f"defense.{spec.label}", DEFENSES)


def _defense_versions(spec: ComponentSpec, stack: Stack) -> list[str]:
    """A registered name keeps its one version in the cell key (``dp``'s key is what it was before
    wrappers); a ``+``-joined stack lists every layer's."""
    return stack.versions if SEP in spec.name else stack.versions[:1]


def cell_files(stack: Stack, attack_target: Any, engine: str) -> list[Path]:
    """Every code file a cell depends on: the harness, its engine, each layer of its defense, its attack."""
    from benchmark.contract.plugins import DEFENSES
    from benchmark.running import fingerprint

    files: set[Path] = set()
    for layer in stack.layers:
        files.update(fingerprint.code_files(DEFENSES.target(layer.name), attack_target, engine))
    return sorted(files)


def run_id_for(suite: SuiteConfig, groups: Sequence[Group]) -> str:
    """The same command resolves to the same run id, so re-running it resumes; the id hashes the cells'
    configuration only, so a re-run after a code or data change recomputes its stale cells in place."""
    return f"{suite.name}-{stable_hash([c.key or c.cell_id for g in groups for c in g.cells], 8)}"
