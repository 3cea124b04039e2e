"""Plan a suite into cells, run them, and append one row per cell.

A cell is one defense x attack x attack mode x scenario x seed. The expensive part (a federation
simulated for one defense, scenario and seed) is shared by all the attack cells on top of it, so
cells are run in groups. A group whose cells are all finished is skipped: re-running resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.api import Defense, view_lacks
from benchmark.config import (
    ComponentSpec,
    ConfigError,
    ScenarioConfig,
    SuiteConfig,
    build,
    check_label,
    field_names,
    load_toml,
    merge,
    params_from_dict,
    parse_value,
    scenario_from_dict,
    scenario_key,
    set_path,
    stable_hash,
    suite_from_dict,
    to_dict,
)
from benchmark.provenance import provenance
from benchmark.registry import Registry
from benchmark.results import FINISHED, append_row, dumps, empty_row, finished_cells, latest_rows, read_rows
from benchmark.stacks import SEP, Stack, resolve_stack

log = logging.getLogger("shebench")

PACKAGE_DIR = Path(__file__).resolve().parent
SCENARIOS = Registry("scenario")
SUITES = Registry("suite")
for _path in sorted((PACKAGE_DIR / "scenarios").glob("*.toml")):
    SCENARIOS.register(_path.stem, _path)
for _path in sorted((PACKAGE_DIR / "suites").glob("*.toml")):
    SUITES.register(_path.stem, _path)


def _toml_for(registry: Registry, ref: str) -> tuple[str, dict[str, Any]]:
    """A registered name or a path to a .toml file."""
    if ref.endswith(".toml"):
        return Path(ref).stem, load_toml(Path(ref))
    return ref, load_toml(registry.target(ref))


def scenario_data(ref: str) -> dict[str, Any]:
    name, data = _toml_for(SCENARIOS, ref)
    data.setdefault("name", name)
    return data


def resolve_scenario(ref: str, overrides: Mapping[str, Any] | None = None) -> ScenarioConfig:
    return scenario_from_dict(merge(scenario_data(ref), overrides or {}), "scenario")  # lists replace


def resolve_suite(ref: str) -> SuiteConfig:
    name, data = _toml_for(SUITES, ref)
    data.setdefault("name", name)
    try:
        return suite_from_dict(data, "suite")
    except ConfigError as exc:  # name the file the problem is in
        source = ref if ref.endswith(".toml") else SUITES.target(ref)
        raise ConfigError(f"{source}: {exc}") from None


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
    from benchmark.data import check_data
    from benchmark.models import MODELS

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
    from attacks import ATTACKS
    from benchmark import fingerprint, validate

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
                        _cell_files(stacks[d.label], ATTACKS.target(a.name) if a else None, scenario.engine)))
                    cell_id = stable_hash({"key": key, "code": code_fp, "data": data_fp})
                    cells.append(Cell(cell_id, scenario.name, d, a, m, seed, key, code_fp, data_fp, case))
                groups.append(Group(scenario, d, seed, tuple(cells)))
    return groups


def _cases(attacks: Registry, spec: ComponentSpec, scenario: ScenarioConfig) -> list[tuple[int, int] | None]:
    """A probe attack has one cell per probe case (batch size x private batch); a round attack one."""
    from benchmark.federated import probe_keys

    return list(probe_keys(scenario)) if attacks.get(spec.name).target == "probe" else [None]


def defense_stack(spec: ComponentSpec) -> Stack:
    """The suite entry's defense, resolved (a stack such as ``dp+she_lora`` or one registered name) and
    its parameters validated; nothing is built."""
    from defenses import DEFENSES

    return resolve_stack(spec.name, spec.params, f"defense.{spec.label}", DEFENSES)


def _defense_versions(spec: ComponentSpec, stack: Stack) -> list[str]:
    """A registered name keeps its one version in the cell key (``dp``'s key is what it was before
    wrappers); a ``+``-joined stack lists every layer's."""
    return stack.versions if SEP in spec.name else stack.versions[:1]


def _cell_files(stack: Stack, attack_target: Any, engine: str) -> list[Path]:
    """Every code file a cell depends on: the harness, its engine, each layer of its defense, its attack."""
    from benchmark import fingerprint
    from defenses import DEFENSES

    files: set[Path] = set()
    for layer in stack.layers:
        files.update(fingerprint.code_files(DEFENSES.target(layer.name), attack_target, engine))
    return sorted(files)


def run_id_for(suite: SuiteConfig, groups: Sequence[Group]) -> str:
    """The same command resolves to the same run id, so re-running it resumes; the id hashes the cells'
    configuration only, so a re-run after a code or data change recomputes its stale cells in place."""
    return f"{suite.name}-{stable_hash([c.key or c.cell_id for g in groups for c in g.cells], 8)}"


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def run_attack(spec: ComponentSpec, mode: str, sim: Any, case: tuple[int, int] | None = None,
               memo: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Run one attack on a view of a finished simulation (the probe ``case``'s, or the round's);
    score it against the private truth.

    An attack whose modes differ only in how they treat hidden or permuted coordinates
    (``modes_differ_only_on_hidden``) gives the same answer in both modes on a clear view; there the
    reconstruction is computed once and shared through ``memo`` (the row says so)."""
    from attacks import ATTACKS
    from benchmark import metrics

    cls, params = _component(ATTACKS, spec, {"mode": mode}, "attack")
    probe = sim.probe
    chosen = None if probe is None or cls.target == "round" else (probe.cases.get(case) if case else probe.first)
    view = None if probe is None else (probe.round_view if cls.target == "round" else chosen and chosen.view)
    missing = view_lacks(view, cls.requires)
    row: dict[str, Any] = {"attack_params": to_dict(params), "metric_directions": dict(cls.metrics)}
    if missing:
        row.update(status="incompatible", attack_note=f"{view.note + '; ' if view and view.note else ''}view lacks: {', '.join(missing)}")
        return row
    shared = memo is not None and cls.modes_differ_only_on_hidden and view.is_clear
    key = (spec.label, case, stable_hash({k: v for k, v in to_dict(params).items() if k != "mode"}))
    t0 = time.perf_counter()
    if shared and key in memo:
        rec, row["attack_s"] = memo[key]
        row["attack_reused"] = True  # attack_s is the computing row's: count it once
        rec = dataclasses.replace(rec, note="; ".join(x for x in (rec.note, "same as the other mode: the view hides and "
                                                                 "permutes nothing (computed once)") if x))
    else:
        rec = cls(params).reconstruct(view)
        row["attack_s"] = time.perf_counter() - t0
        if shared:
            memo[key] = (rec, row["attack_s"])
    row["attack_note"] = rec.note
    row.update({k: v for k, v in rec.extra.items() if k not in row})
    if rec.status == "abstained":
        row["status"] = "abstained"
        return row
    if cls.target == "round":
        if rec.membership_scores is None:
            row.update(status="abstained", attack_note=rec.note or "no membership scores")
            return row
        row.update(metrics.membership_row(rec.membership_scores, rec.membership_scores_by, probe.candidates_are_members))
    else:
        texts = [metrics.private_text(t, probe.template, probe.label_names) for t in rec.texts]
        row.update(metrics.score_reconstruction(chosen.references, texts, sim.tokenizer))
        row["n_reconstructed"] = len(rec.texts)
    row["status"] = "ok"
    return row


def simulate_group(group: Group, device: str, progress: Callable[[str], None]) -> Any:
    from benchmark.cost import simulate_cost
    from benchmark.engines import ENGINES

    defense = defense_stack(group.defense).build()
    run = simulate_cost if group.scenario.kind == "cost" else ENGINES.get(group.scenario.engine)
    sim = run(group.scenario, defense, group.seed, device, progress)
    return sim, defense


def _base_row(run_id: str, cell: Cell, group: Group, prov: dict[str, Any], device: str) -> dict[str, Any]:
    row = empty_row()
    row.update(
        run_id=run_id, cell_id=cell.cell_id, scenario=cell.scenario, defense=cell.defense.label,
        defense_name=cell.defense.name, defense_stack=defense_stack(cell.defense).name,
        attack=cell.attack.label if cell.attack else "none", attack_mode=cell.mode,
        seed=cell.seed, engine=group.scenario.engine, defense_params=dict(cell.defense.params), device=device,
        tiers="/".join(f"{t.name}:r{t.rank}:b{t.budget:g}" for t in group.scenario.tiers),
        threat_init=group.scenario.threat.init, observation=group.scenario.threat.observation,
        probe_round=group.scenario.threat.round,
        probe_batch_size=cell.probe[0] if cell.probe else group.scenario.threat.batch_size,
        probe_batch=cell.probe[1] if cell.probe else None,
        probe_rank=_probe_rank(group.scenario, group.seed),
        git_commit=prov["git"]["commit"], git_dirty=prov["git"]["dirty"],
    )
    return row


def defense_facts(defense: Defense, scenario: ScenarioConfig, seed: int) -> dict[str, Any]:
    """What the defense declares about itself for this scenario's clients: how much it encrypts per
    tier and for the probed client, and which of the paper's methods and cost roles it plays."""
    from benchmark.federated import make_clients, probe_target

    clients = make_clients(scenario, seed)
    target = clients[probe_target(scenario, seed)] if scenario.kind == "federated" else None
    return {"encrypts": defense.encrypts, "tier_facts": [dataclasses.asdict(t) for t in defense.tier_facts(clients)],
            "encrypted_share": defense.applied_budget(target) if target is not None else None,
            "paper_method": defense.paper_method(), "cost_role": defense.cost_role()}


def _probe_rank(scenario: ScenarioConfig, seed: int) -> int:
    from benchmark.federated import make_clients, probe_target

    return make_clients(scenario, seed)[probe_target(scenario, seed)].rank if scenario.kind == "federated" else 0


def execute(groups: Sequence[Group], run_dir: Path, device: str, *, force: bool = False,
            fail_fast: bool = False, quiet: bool = False) -> list[dict[str, Any]]:
    """Run every unfinished cell, appending its row to ``run_dir/rows.jsonl`` as it ends."""
    from tqdm.auto import tqdm

    rows_path = run_dir / "rows.jsonl"
    done = set() if force else finished_cells(rows_path, [])
    prov = provenance()
    written: list[dict[str, Any]] = []
    total = sum(len(g.cells) for g in groups)
    bar = tqdm(total=total, desc="cells", unit="cell", disable=quiet, file=sys.stderr)
    for group in groups:
        todo = [c for c in group.cells if c.cell_id not in done]
        if not todo:
            bar.update(len(group.cells))
            continue
        bar.update(len(group.cells) - len(todo))
        label = f"{group.scenario.name}/{group.defense.label}/seed{group.seed}"
        bar.set_postfix_str(label)
        sim_error, sim, defense = None, None, None
        memo: dict[Any, Any] = {}  # reconstructions shared between modes on clear views, per simulation
        try:
            sim, defense = simulate_group(group, device, lambda msg, label=label: bar.set_postfix_str(f"{label} {msg}"))
        except Exception as exc:  # a failing cell is recorded, the run goes on
            if fail_fast:
                raise
            sim_error = f"{type(exc).__name__}: {exc}"
            _log_traceback(run_dir, group, exc)
        for cell in todo:
            row = _base_row(run_dir.name, cell, group, prov, device)
            row.update(cell_key=cell.key, code_fp=cell.code_fp, data_fp=cell.data_fp)
            if sim_error is None:
                row.update({k: v for k, v in sim.metrics.items() if k in row})
                row.update(defense_facts(defense, group.scenario, group.seed))
                privacy = defense.privacy_params()
                row["privacy"] = privacy
                row.update(defense.column_values(privacy))
                row["status"] = "ok"
                if cell.attack is not None:
                    try:
                        row.update(run_attack(cell.attack, cell.mode, sim, cell.probe, memo))
                    except Exception as exc:
                        if fail_fast:
                            raise
                        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                        _log_traceback(run_dir, group, exc)
            else:
                row.update(status="failed", error=sim_error)
            row["peak_rss_mb"] = _peak_rss_mb()
            row["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            append_row(rows_path, row)
            written.append(row)
            bar.update(1)
            log.info("%s", _summary(row))
        if sim is not None and getattr(sim, "rounds", None):
            append_row(run_dir / "rounds.jsonl", {"group": label, "rounds": sim.rounds})
    bar.close()
    return written


def _summary(row: dict[str, Any]) -> str:
    parts = [f"[{row['status']}] {row['scenario']} {row['defense']} x {row['attack']}{'/' + row['attack_mode'] if row['attack_mode'] else ''} seed={row['seed']}"]
    if row.get("probe_batch") is not None:
        parts.append(f"batch={row['probe_batch_size']}#{row['probe_batch']}")
    for key, fmt in (("utility", "{:.3f}"), ("rouge1", "{:.3f}"), ("mia_auc", "{:.3f}"), ("bytes_up_per_client_round", "{:.0f}B"),
                     ("enc_s", "{:.3f}s"), ("agg_rel_err", "{:.1e}"), ("epsilon", "{:.2f}")):
        if row.get(key) is not None:
            parts.append(f"{key}={fmt.format(row[key])}")
    if row.get("error"):
        parts.append(f"error={row['error'][:200]}")
    return " ".join(parts)


def _log_traceback(run_dir: Path, group: Group, exc: BaseException) -> None:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = f"{group.scenario.name}_{group.defense.label}_seed{group.seed}.log"
    with open(logs / name, "a", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + "\n")


class RunBusy(ConfigError):
    """Another process is writing to the same run folder."""


def prepare_run_dir(out: Path, run_id: str, *, create: bool = True) -> Path:
    """``out/run_id``, checked: a safe run id, ``out`` a writable folder (created if missing)."""
    check_label("--run-id", run_id)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder; give a folder for the runs")
    run_dir = out / run_id
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} exists and is not a folder")
    if not create:
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r}: cannot create {str(run_dir)!r}: {exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: {str(run_dir)!r} is not writable; give another --out")
    for name in ("rows.jsonl", "manifest.json", "rounds.jsonl"):
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise ConfigError(f"{str(run_dir / name)!r} is not a file; move it away")
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` for the run: a second run into the same folder is refused, not doubled.
    The OS releases the lock when the process ends, however it ends."""
    import fcntl

    fh = open(run_dir / "run.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunBusy(f"another shebench run ({holder}) is writing to {run_dir}; wait for it to finish "
                      "or choose another --out or --run-id") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def code_and_data(groups: Sequence[Group]) -> tuple[dict[str, str], dict[str, str]]:
    """Per-file hashes of all code the planned cells depend on, and the data/model inputs by content."""
    from attacks import ATTACKS
    from benchmark import fingerprint

    files: set[Path] = set()
    data: dict[str, str] = {}
    for g in groups:
        data.update(fingerprint.data_inputs(g.scenario))
        stack = defense_stack(g.defense)
        for c in g.cells:
            files.update(_cell_files(stack, ATTACKS.target(c.attack.name) if c.attack else None, g.scenario.engine))
    return fingerprint.file_hashes(sorted(files)), data


@dataclass
class ResumeState:
    """What a (re-)run finds in its folder: finished cells, stale ones and why, unreadable lines."""

    total: int
    done: set[str]
    stale: int
    reasons: list[str]
    problems: list[str]

    @property
    def todo(self) -> int:
        return self.total - len(self.done)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest, or {} if there is none; a broken one is moved aside (``manifest.json.broken``)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, UnicodeDecodeError) as exc:
        aside = path.with_name("manifest.json.broken")
        path.replace(aside)
        log.warning("shebench: warning: %s is unreadable (%s); moved to %s, a new one is written", path, exc, aside.name)
        return {}


def resume_state(groups: Sequence[Group], run_dir: Path, *, force: bool = False) -> ResumeState:
    problems: list[str] = []
    rows = latest_rows(read_rows(run_dir / "rows.jsonl", problems))
    cells = [c for g in groups for c in g.cells]
    planned = {c.cell_id for c in cells}
    done = set() if force else {r["cell_id"] for r in rows if r["cell_id"] in planned and r.get("status") in FINISHED}
    by_key = {c.key: c for c in cells if c.key}
    stale_rows = [r for r in rows if r.get("status") in FINISHED and r.get("cell_key") in by_key
                  and r["cell_id"] != by_key[r["cell_key"]].cell_id and by_key[r["cell_key"]].cell_id not in done]
    reasons = []
    if stale_rows and not force:
        old = read_manifest(run_dir)
        code, data = code_and_data(groups)
        if any(r.get("code_fp") != by_key[r["cell_key"]].code_fp for r in stale_rows):
            changed = _diff(old.get("code_files") or {}, code)
            reasons.append(f"code changed since they ran ({changed or 'files not recorded'})")
        if any(r.get("data_fp") != by_key[r["cell_key"]].data_fp for r in stale_rows):
            changed = _diff(old.get("data_inputs") or {}, data)
            reasons.append(f"data or model changed ({changed or 'inputs not recorded'})")
    return ResumeState(len(cells), done, 0 if force else len({r["cell_key"] for r in stale_rows}), reasons, problems)


def _diff(old: Mapping[str, str], new: Mapping[str, str], limit: int = 6) -> str:
    changed = sorted(k for k in new if old and old.get(k) != new[k]) + sorted(k for k in old if old and k not in new)
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def write_manifest(run_dir: Path, suite: SuiteConfig, groups: Sequence[Group], argv: Sequence[str], device: str,
                   note: Mapping[str, Any] | None = None) -> None:
    """Record the run. The first invocation's provenance stays; each resume is appended to ``resumed``
    with its own argv, git state, packages and machine; ``cells`` is the union of all planned cells."""
    run_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    code, data = code_and_data(groups)
    cells = [{"cell_id": c.cell_id, "cell_key": c.key, "defense": c.defense.label, "attack": c.attack.label if c.attack else "none",
              "mode": c.mode, "scenario": c.scenario, "seed": c.seed, "probe": list(c.probe) if c.probe else None}
             for g in groups for c in g.cells]
    prov = provenance()
    this = {"argv": list(argv), "device": device, **prov, "at": now, **(note or {})}
    old = read_manifest(run_dir)
    if old:
        manifest = dict(old)
        merged = {c.get("cell_key") or c["cell_id"]: c for c in old.get("cells", []) if isinstance(c, dict) and "cell_id" in c}
        merged.update({c["cell_key"] or c["cell_id"]: c for c in cells})
        manifest["cells"] = list(merged.values())
        manifest["scenarios"] = {**old.get("scenarios", {}), **{g.scenario.name: to_dict(g.scenario) for g in groups}}
        manifest["resumed"] = list(old.get("resumed", [])) + [this]
    else:
        manifest = {
            "run_id": run_dir.name, "argv": list(argv), "device": device, "suite": to_dict(suite),
            "scenarios": {g.scenario.name: to_dict(g.scenario) for g in groups}, "cells": cells,
            **prov, "written_at": now, "resumed": [],
        }
    manifest["code_files"], manifest["data_inputs"] = code, data
    tmp = run_dir / "manifest.json.tmp"
    tmp.write_text(dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(run_dir / "manifest.json")


__all__ = ["SCENARIOS", "SUITES", "plan", "execute", "parse_overrides", "resolve_suite", "resolve_scenario",
           "write_manifest", "run_id_for", "build", "prepare_run_dir", "run_lock", "resume_state", "RunBusy"]
