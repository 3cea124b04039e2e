"""Run planned groups: one simulation per group on its engine, then each attack cell on the views it
produced, scored against the truth only the harness holds; one row per cell appended as it ends. A
failing cell records its error and the run goes on."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import resource
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from benchmark.config import (
    ComponentSpec,
    ScenarioConfig,
    stable_hash,
    to_dict,
)
from benchmark.contract import Defense, view_lacks
from benchmark.contract.progress import reporting
from benchmark.running.planning import Cell, Group, _component, defense_stack
from benchmark.running.provenance import provenance
from benchmark.running.results import (
    append_row,
    empty_row,
    finished_cells,
)

log = logging.getLogger("shebench")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def run_attack(spec: ComponentSpec, mode: str, sim: Any, case: tuple[int, int] | None = None,
               memo: dict[Any, Any] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one attack on a view of a finished simulation (the probe ``case``'s, or the round's);
    score it against the private truth.

    An attack whose modes differ only in how they treat hidden or permuted coordinates
    (``modes_differ_only_on_hidden``) gives the same answer in both modes on a clear view; there the
    reconstruction is computed once and shared through ``memo`` (the row says so)."""
    from benchmark.contract.plugins import ATTACKS
    from benchmark.running import metrics

    cls, params = _component(ATTACKS, spec, {"mode": mode}, "attack")
    probe = sim.probe
    chosen = None if probe is None or cls.target == "round" else (probe.cases.get(case) if case else probe.first)
    view = None if probe is None else (probe.round_view if cls.target == "round" else chosen and chosen.view)
    missing = view_lacks(view, cls.needs())
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
        with reporting(progress) if progress else nullcontext():  # the attack's ticks: decoding steps, labels
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
        if chosen.reference_ids:
            ids = rec.token_ids or [sim.tokenizer(t, add_special_tokens=False).input_ids for t in rec.texts]
            row["token_set_recall"] = metrics.token_set_recall(chosen.reference_ids, ids)
        row["n_reconstructed"] = len(rec.texts)
    row["status"] = "ok"
    return row


def simulate_group(group: Group, device: str, progress: Callable[[str], None]) -> Any:
    """The group's simulation on its scenario's engine, and the defense it ran (what the defense
    declares about itself is read from it; the privacy facts its roles told come with the result, since
    on Flower the client role lives in another process)."""
    from benchmark.contract.plugins import ENGINES

    defense = defense_stack(group.defense).build()
    sim = ENGINES.get(group.scenario.engine)(group.scenario, defense, group.seed, device, progress)
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
    from benchmark.federation.sampling import make_clients, probe_target

    clients = make_clients(scenario, seed)
    target = clients[probe_target(scenario, seed)] if scenario.kind == "federated" else None
    return {"encrypts": defense.encrypts, "tier_facts": [dataclasses.asdict(t) for t in defense.tier_facts(clients)],
            "encrypted_share": defense.applied_budget(target) if target is not None else None,
            "paper_method": defense.paper_method(), "cost_role": defense.cost_role()}


def _probe_rank(scenario: ScenarioConfig, seed: int) -> int:
    from benchmark.federation.sampling import make_clients, probe_target

    return make_clients(scenario, seed)[probe_target(scenario, seed)].rank if scenario.kind == "federated" else 0


class _Bar:
    """The run's progress bar, over estimated seconds of work rather than cells: a simulation weighs what
    it is expected to take, so the bar does not stall on it and then leap over its cells. The ETA is
    tqdm's, from the pace measured in this run (work done / time, no smoothing: the pieces are uneven),
    work finished before a resume excluded. Without weights every cell weighs 1, as a bar of cells."""

    def __init__(self, groups: Sequence[Group], done: set[str], weights: tuple[Sequence[float], Mapping[str, float]] | None,
                 quiet: bool) -> None:
        from tqdm.auto import tqdm

        self.sim_w, self.cell_w = weights if weights is not None else ([0.0] * len(groups), {})
        cells = [c for g in groups for c in g.cells]
        self.n_cells, self.done_cells = len(cells), sum(c.cell_id in done for c in cells)
        self.work = sum(self.sim_w) + sum(self.cell(c) for c in cells)
        self.before = sum(self.cell(c) for c in cells if c.cell_id in done) + sum(
            w for g, w in zip(groups, self.sim_w) if all(c.cell_id in done for c in g.cells))
        self.done_work = self.before
        self.tqdm = tqdm(total=self.work, initial=self.before, desc=self._desc(), disable=quiet, file=sys.stderr,
                         smoothing=0, bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def cell(self, cell: Cell) -> float:
        return self.cell_w.get(cell.cell_id, 1.0)

    def _desc(self) -> str:
        return f"{self.done_cells}/{self.n_cells} cells"

    def advance(self, work: float, cells: int = 0) -> None:
        self.done_cells += cells
        self.done_work += work
        self.tqdm.set_description_str(self._desc(), refresh=False)
        self.tqdm.update(work)

    def set_postfix_str(self, text: str) -> None:
        self.tqdm.set_postfix_str(text)

    def close(self) -> None:
        self.tqdm.close()


def execute(groups: Sequence[Group], run_dir: Path, device: str, *, force: bool = False,
            fail_fast: bool = False, quiet: bool = False,
            weights: tuple[Sequence[float], Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """Run every unfinished cell, appending its row to ``run_dir/rows.jsonl`` as it ends. ``weights``
    (estimated seconds per group's simulation and per cell id, ``estimate.weights``) drive the bar."""
    rows_path = run_dir / "rows.jsonl"
    done = set() if force else finished_cells(rows_path, [])
    prov = provenance()
    written: list[dict[str, Any]] = []
    bar = _Bar(groups, done, weights, quiet)
    for group, sim_weight in zip(groups, bar.sim_w):
        todo = [c for c in group.cells if c.cell_id not in done]
        if not todo:
            continue
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
        bar.advance(sim_weight)
        for cell in todo:
            row = _base_row(run_dir.name, cell, group, prov, device)
            row.update(cell_key=cell.key, code_fp=cell.code_fp, data_fp=cell.data_fp)
            if sim_error is None:
                row.update({k: v for k, v in sim.metrics.items() if k in row})
                row.update(defense_facts(defense, group.scenario, group.seed))
                privacy = sim.privacy_params()
                row["privacy"] = privacy
                row.update(defense.column_values(privacy))
                row["status"] = "ok"
                if cell.attack is not None:
                    try:
                        shown = f"{label} {cell.attack.label}/{cell.mode}"
                        bar.set_postfix_str(shown)
                        row.update(run_attack(cell.attack, cell.mode, sim, cell.probe, memo,
                                              lambda msg, shown=shown: bar.set_postfix_str(f"{shown}: {msg}")))
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
            bar.advance(bar.cell(cell), cells=1)
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
