"""How long a planned run will take, from the seconds the committed reference runs measured.

A run is simulations (one per defense x scenario x seed) plus attack cells (one per probe case and
mode) that read them. Each planned piece takes the median of the most similar measured pieces, going
down a fixed ladder of looser matches (the source of each number is kept); a piece nothing matches is
*unknown*, never 0. Within a rung only the newest run invocation's pieces count (the code got faster between
the reference runs: local training went from ~12 to ~4 s per client-round between Dec 2 and Dec 7,
on the same machine and threads), and the row says which run it took. Simulations are scaled by their work counts (client-rounds, held-out examples,
probe cases), since a measured scenario rarely has the planned one's counts. The numbers are only as
good as the reference runs' load (mostly one torch thread, two runs side by side on 2 cores), code
and machine: a plan, not a promise.

The core (``estimate``, ``shard_totals``, ``format_estimate``) is pure; ``read_reference`` and
``planned_pieces`` are the adapters from run folders and from planned groups."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.running.sharding import shard_indices

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"
REUSED_NOTE = "same as the other mode"  # rows from before the attack_reused column say it here


@dataclass(frozen=True)
class CaseKey:
    """What an attack cell's time depends on, as far as rows record it."""

    attack: str  # the suite's label (``dager_strict`` is not ``dager``)
    attack_name: str  # the registered attack
    defense: str  # the suite's label
    mode: str
    batch: int
    observation: str
    round: int
    rank: int  # the probed client's LoRA rank


@dataclass(frozen=True)
class MeasuredCase:
    key: CaseKey
    seconds: float
    free: str = ""  # "reused" / "incompatible": the row cost nothing of its own
    run: str = ""  # the reference run it comes from
    when: str = ""  # when the invocation of the run that wrote it started (ISO time): newer ones win


@dataclass(frozen=True)
class Work:
    """What a simulation's time scales with."""

    client_rounds: int = 0  # rounds x clients per round: local training
    test_examples: int = 0  # the final evaluation
    probe_cases: int = 0  # the attacked client's extra steps


@dataclass(frozen=True)
class SimKey:
    scenario: str  # the suite's label
    defense: str
    model: str  # kind:model name
    engine: str = "inproc"  # what ran the rounds; a deployment ("flower/deployment") is never a simulation's guide


@dataclass(frozen=True)
class MeasuredSim:
    key: SimKey
    sim_s: float
    eval_s: float
    probe_s: float
    work: Work
    run: str = ""
    when: str = ""


@dataclass(frozen=True)
class PlannedSim:
    key: SimKey
    work: Work
    cells: tuple[tuple[str, CaseKey | None], ...]  # (cell id, its attack case; None: no attack)


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: unknown
    source: str  # which rung of the ladder matched, or why it costs nothing
    n: int = 0  # measured pieces behind the median


@dataclass(frozen=True)
class Reference:
    cases: tuple[MeasuredCase, ...]
    sims: tuple[MeasuredSim, ...]
    runs: int = 0
    load: str = ""  # machines and torch threads of the reference runs, in words


@dataclass(frozen=True)
class RunEstimate:
    sims: tuple[Estimate, ...]  # one per planned simulation, in plan order
    cells: Mapping[str, Estimate] = field(default_factory=dict)  # by cell id


# Looser and looser matches; a rung names the fields that must agree.
CASE_LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("exact", ("attack", "defense", "mode", "batch", "observation", "round", "rank")),
    ("any defense", ("attack", "mode", "batch", "observation", "round", "rank")),
    ("any defense, mode", ("attack", "batch", "observation", "round", "rank")),
    ("any threat", ("attack", "defense", "mode", "batch", "rank")),
    ("any threat, defense, mode", ("attack", "batch", "rank")),
    ("any rank, defense, mode", ("attack", "batch", "observation", "round")),
    ("same attack and batch", ("attack", "batch")),
    ("same attack name and batch", ("attack_name", "batch")),
    ("same attack, any batch", ("attack_name",)),
)
# Whether a cell costs nothing (reuses the other mode's result, or the view cannot serve the attack)
# depends on the defense and the mode: decided by the first of these rungs with rows, by majority.
FREE_LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("exact", CASE_LADDER[0][1]),
    ("same attack, defense, mode, threat", ("attack", "defense", "mode", "observation", "round")),
    ("same attack, defense, mode", ("attack", "defense", "mode")),
)
SIM_LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("same scenario and defense", ("engine", "scenario", "defense")),
    ("same scenario", ("engine", "scenario")),
    ("same model and defense", ("engine", "model", "defense")),
    ("same model", ("engine", "model")),
)


def _key(obj: Any, fields: Sequence[str]) -> tuple[Any, ...]:
    return tuple(getattr(obj, f) for f in fields)


def _index(items: Iterable[Any], key_of: Any, ladder: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, dict[tuple, list]]:
    index: dict[str, dict[tuple, list]] = {name: defaultdict(list) for name, _ in ladder}
    for item in items:
        for name, fields in ladder:
            index[name][_key(key_of(item), fields)].append(item)
    return index


def newest(items: Sequence[Any]) -> list[Any]:
    """The pieces of the newest run invocation among ``items`` (ordered by when it started, then run name)."""
    if not items:
        return []
    last = max((m.when, m.run) for m in items)
    return [m for m in items if (m.when, m.run) == last]


def estimate_case(key: CaseKey, free_index: Mapping[str, Mapping[tuple, list]],
                  time_index: Mapping[str, Mapping[tuple, list]]) -> Estimate:
    """A cell's attack seconds: 0 where similar rows cost nothing, else the median of the first rung's
    computed rows (of the newest run that has any)."""
    for name, fields in FREE_LADDER:
        rows = newest(free_index[name].get(_key(key, fields), []))
        if rows:
            free = [r.free for r in rows if r.free]
            if 2 * len(free) > len(rows):
                return Estimate(0.0, f"0: {statistics.mode(free)} ({name}, {rows[0].run})", len(rows))
            break
    for name, fields in CASE_LADDER:
        rows = newest([r for r in time_index[name].get(_key(key, fields), []) if not r.free])
        if rows:
            return Estimate(statistics.median(r.seconds for r in rows), f"{name}, {rows[0].run}", len(rows))
    return Estimate(None, "unknown")


def _ratio(planned: int, measured: int) -> float:
    return planned / measured if planned > 0 and measured > 0 else 1.0


def scaled_sim(m: MeasuredSim, work: Work) -> float:
    """``m``'s seconds with each part scaled to the planned work: training (and the rest) by
    client-rounds, evaluation by held-out examples, the probe by probe cases."""
    rest = max(m.sim_s - m.eval_s - m.probe_s, 0.0)
    return (rest * _ratio(work.client_rounds, m.work.client_rounds) + m.eval_s * _ratio(work.test_examples, m.work.test_examples)
            + m.probe_s * _ratio(work.probe_cases, m.work.probe_cases))


def estimate_sim(planned: PlannedSim, index: Mapping[str, Mapping[tuple, list]]) -> Estimate:
    for name, fields in SIM_LADDER:
        sims = newest(index[name].get(_key(planned.key, fields), []))
        if sims:
            return Estimate(statistics.median(scaled_sim(m, planned.work) for m in sims), f"{name}, {sims[0].run}", len(sims))
    return Estimate(None, "unknown")


def estimate(planned: Sequence[PlannedSim], reference: Reference) -> RunEstimate:
    """Every planned simulation's and cell's seconds."""
    free_index = _index(reference.cases, lambda m: m.key, FREE_LADDER)
    time_index = _index(reference.cases, lambda m: m.key, CASE_LADDER)
    sim_index = _index(reference.sims, lambda m: m.key, SIM_LADDER)
    cells: dict[str, Estimate] = {}
    for p in planned:
        for cell_id, case in p.cells:
            cells[cell_id] = Estimate(0.0, "no attack") if case is None else estimate_case(case, free_index, time_index)
    return RunEstimate(tuple(estimate_sim(p, sim_index) for p in planned), cells)


@dataclass(frozen=True)
class Total:
    seconds: float  # known pieces only
    unknown: int  # pieces with no estimate (not in seconds)


def total(planned: Sequence[PlannedSim], est: RunEstimate, which: Iterable[int] | None = None) -> Total:
    """Seconds of the simulations ``which`` (default all) and their cells, one process."""
    seconds, unknown = 0.0, 0
    for i in range(len(planned)) if which is None else which:
        for e in (est.sims[i], *(est.cells[c] for c, _ in planned[i].cells)):
            if e.seconds is None:
                unknown += 1
            else:
                seconds += e.seconds
    return Total(seconds, unknown)


def shard_totals(planned: Sequence[PlannedSim], est: RunEstimate, n: int) -> list[Total]:
    """Each of ``n`` shards' total (the groups ``--shard k/n`` runs)."""
    buckets = [(p.key.scenario, p.key.defense) for p in planned]  # as sharding.group_bucket
    return [total(planned, est, shard_indices(buckets, k, n)) for k in range(1, n + 1)]


def weights(planned: Sequence[PlannedSim], est: RunEstimate) -> tuple[list[float], dict[str, float]]:
    """Progress-bar weights: estimated seconds, an unknown piece weighing the median known piece of
    its kind (a weight only: the bar's ETA comes from the measured pace, not from these seconds)."""
    sims = [e.seconds for e in est.sims if e.seconds is not None]
    cells = [e.seconds for e in est.cells.values() if e.seconds]
    sim_default, cell_default = (statistics.median(sims) if sims else 1.0), (statistics.median(cells) if cells else 1.0)
    return ([e.seconds if e.seconds is not None else sim_default for e in est.sims],
            {c: e.seconds if e.seconds is not None else cell_default for c, e in est.cells.items()})


# ---- formatting -----------------------------------------------------------------------------------


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass(frozen=True)
class Line:
    """One row of the estimate table: a scenario/defense's simulations, or its cells of one attack
    and batch size."""

    what: str
    pieces: int
    seconds: float  # known pieces
    unknown: int
    sources: tuple[str, ...]


def table(planned: Sequence[PlannedSim], est: RunEstimate) -> list[Line]:
    groups: dict[str, list[Estimate]] = {}
    for p, sim in zip(planned, est.sims):
        groups.setdefault(f"{p.key.scenario}/{p.key.defense}/(simulation)", []).append(sim)
        for cell_id, case in p.cells:
            what = f"{p.key.scenario}/{p.key.defense}/(no attack)" if case is None else \
                f"{p.key.scenario}/{p.key.defense}/{case.attack} b{case.batch}"
            groups.setdefault(what, []).append(est.cells[cell_id])
    lines = []
    for what, ests in groups.items():
        known = [e.seconds for e in ests if e.seconds is not None]
        counts: dict[str, int] = defaultdict(int)
        for e in ests:
            counts[e.source] += 1
        sources = tuple(s if len(counts) == 1 else f"{s} x{n}" for s, n in counts.items())
        lines.append(Line(what, len(ests), sum(known), len(ests) - len(known), sources))
    return lines


def format_estimate(planned: Sequence[PlannedSim], est: RunEstimate, reference: Reference, shards: int = 2,
                    top: int = 5) -> list[str]:
    """The table (scenario/defense/attack and batch: pieces, seconds each, source, subtotal), the biggest
    contributors and the totals for one process and for ``shards`` processes side by side."""
    lines = table(planned, est)
    width = max((len(x.what) for x in lines), default=10)
    out = [f"estimate from {len(reference.cases)} measured attack cells and {len(reference.sims)} simulations "
           f"in {reference.runs} reference runs (median of the most similar; source = the match used):",
           f"  {'part':<{width}} {'n':>5} {'s each':>8}  {'subtotal':>12}  source"]
    for x in lines:
        each = f"{x.seconds / (x.pieces - x.unknown):.1f}" if x.pieces > x.unknown else "unknown"
        sub = human(x.seconds) + (f" +{x.unknown}?" if x.unknown else "")
        out.append(f"  {x.what:<{width}} {x.pieces:>5} {each:>8}  {sub:>12}  {', '.join(x.sources)}")
    whole = total(planned, est)
    big = sorted(lines, key=lambda x: -x.seconds)[:top]
    out.append("biggest: " + "; ".join(f"{x.what} {human(x.seconds)} ({100 * x.seconds / whole.seconds:.0f}%)"
                                         for x in big if whole.seconds > 0))
    unknown = f"; {whole.unknown} pieces unknown, not counted" if whole.unknown else ""
    out.append(f"estimated total, 1 process: {human(whole.seconds)}{unknown}")
    if shards > 1 and len(planned) > 1:
        parts = shard_totals(planned, est, shards)
        each = ", ".join(f"--shard {k + 1}/{shards}: {human(t.seconds)}" + (f" +{t.unknown}?" if t.unknown else "")
                         for k, t in enumerate(parts))
        out.append(f"estimated total, {shards} processes side by side (one torch thread each): "
                   f"{human(max(t.seconds for t in parts))} ({each})")
    out.append(f"caveat: seconds measured under the reference runs' load ({reference.load or 'unknown'}), "
               "on the code of their commits; a guide for planning, not a promise")
    return out


# ---- adapters ------------------------------------------------------------------------------------


def work_of(scenario: Mapping[str, Any]) -> Work:
    """A scenario's work counts from its resolved config (``to_dict`` form, as manifests store it);
    missing fields count 0 (no scaling of that part)."""
    threat, probe, data = scenario.get("threat") or {}, scenario.get("probe") or {}, scenario.get("data") or {}
    if threat.get("observation") == "upload":
        cases = 1
    elif threat:
        cases = len(threat.get("batch_sizes") or [threat.get("batch_size", 1)]) * int(probe.get("batches", 1))
    else:
        cases = 0
    return Work(int(scenario.get("rounds", 0)) * int(scenario.get("clients_per_round", 0)),
                int(data.get("test_examples", 0)), cases)


def model_of(scenario: Mapping[str, Any]) -> str:
    return f"{scenario.get('kind', '?')}:{(scenario.get('model') or {}).get('name', '?')}"


def engine_of(row: Mapping[str, Any]) -> str:
    """The engine a row ran on, a Flower deployment told apart from Flower's simulation runtime."""
    engine = str(row.get("engine") or "inproc")
    return f"{engine}/deployment" if row.get("engine_runtime") == "deployment" else engine


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def sessions(manifest: Mapping[str, Any]) -> list[str]:
    """When each invocation of a run started (the first, then every resume), ISO times, sorted."""
    starts = [manifest.get("written_at")] + [r.get("at") for r in manifest.get("resumed") or [] if isinstance(r, Mapping)]
    return sorted(str(s) for s in starts if s)


def session_of(finished_at: str, starts: Sequence[str]) -> str:
    """The start of the invocation that wrote a row (the last start before it finished): a resumed run's
    rows from an older invocation, on older code, lose to its newest invocation's."""
    before = [s for s in starts if s <= finished_at]
    return before[-1] if before else finished_at


def reference_from_rows(runs: Sequence[tuple[Sequence[Mapping[str, Any]], Mapping[str, Any]]]) -> Reference:
    """Measured pieces from (rows, manifest) of each run. Failed rows are left out; a row that reused the
    other mode's result or whose view could not serve the attack is kept as ``free``."""
    cases: list[MeasuredCase] = []
    sims: dict[tuple, MeasuredSim] = {}
    loads: dict[str, int] = defaultdict(int)
    for rows, manifest in runs:
        run = str(manifest.get("run_id") or (rows[0].get("run_id") if rows else "") or "?")
        starts = sessions(manifest)
        names = {a.get("label", a.get("name")): a.get("name") for a in (manifest.get("suite") or {}).get("attacks", [])
                 if isinstance(a, Mapping)}
        scenarios = manifest.get("scenarios") or {}
        machine = manifest.get("machine") or {}
        loads[f"{machine.get('cpu', '?')} {machine.get('cpu_count', '?')} cores, {machine.get('torch_threads', '?')} torch threads"] += 1
        for r in rows:
            if r.get("status") not in ("ok", "abstained", "incompatible"):
                continue
            scen = scenarios.get(r.get("scenario"), {})
            when = session_of(str(r.get("finished_at") or ""), starts)
            sim_s = _num(r.get("sim_s"))
            if sim_s is not None:
                key = SimKey(r["scenario"], r.get("defense", "?"), model_of(scen), engine_of(r))
                sims[(r.get("run_id"), key, r.get("seed"), sim_s)] = MeasuredSim(
                    key, sim_s, _num(r.get("eval_s")) or 0.0, _num(r.get("probe_s")) or 0.0, work_of(scen), run, when)
            if r.get("attack", "none") == "none":
                continue
            reused = bool(r.get("attack_reused")) or REUSED_NOTE in str(r.get("attack_note") or "")
            free = "incompatible" if r["status"] == "incompatible" else "reused" if reused else ""
            seconds = _num(r.get("attack_s"))
            if seconds is None and not free:
                continue
            try:
                key = CaseKey(str(r["attack"]), names.get(r["attack"]) or str(r["attack"]), str(r.get("defense", "?")),
                              r.get("attack_mode") or "", int(r.get("probe_batch_size") or 0), r.get("observation") or "",
                              int(r.get("probe_round") or 0), int(r.get("probe_rank") or 0))
            except (TypeError, ValueError):  # a row this code cannot read says nothing about time
                continue
            cases.append(MeasuredCase(key, seconds or 0.0, free, run, when))
    load = "; ".join(f"{k} ({n} runs)" for k, n in sorted(loads.items(), key=lambda kv: -kv[1]))
    return Reference(tuple(cases), tuple(sims.values()), len(runs), load)


def read_reference(root: Path = REFERENCE) -> Reference:
    """Every run folder under ``root`` (its rows.jsonl and manifest.json); unreadable lines skipped."""
    runs = []
    for rows_path in sorted(Path(root).glob("*/rows.jsonl")):
        rows = []
        for line in rows_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        manifest_path = rows_path.with_name("manifest.json")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
        except ValueError:
            manifest = {}
        runs.append((rows, manifest if isinstance(manifest, dict) else {}))
    return reference_from_rows(runs)


def planned_pieces(groups: Sequence[Any]) -> list[PlannedSim]:
    """The planner's groups as pieces to estimate (the same fields the rows of those cells will carry)."""
    from benchmark.config import to_dict
    from benchmark.federation.sampling import make_clients, probe_target

    out = []
    for g in groups:
        scen = to_dict(g.scenario)
        th = g.scenario.threat
        rank = make_clients(g.scenario, g.seed)[probe_target(g.scenario, g.seed)].rank if g.scenario.kind == "federated" else 0
        cells = tuple((c.cell_id, None if c.attack is None else CaseKey(
            c.attack.label, c.attack.name, c.defense.label, c.mode, c.probe[0] if c.probe else th.batch_size,
            th.observation, th.round, rank)) for c in g.cells)
        out.append(PlannedSim(SimKey(g.scenario.name, g.defense.label, model_of(scen), g.scenario.engine), work_of(scen),
                              cells))
    return out
