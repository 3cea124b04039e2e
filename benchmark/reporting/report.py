"""``shebench report``: markdown tables and PNG plots from one or more runs.

Tables: the privacy matrix (defense x attack/mode, mean +- std over seeds; abstentions, failures and
incompatible pairs shown as such, never as a score), the threat model per scenario and defense,
utility and cost per defense, per-tier costs, and cost scenarios. Arrows mark each metric's direction:
attack metrics take theirs from the rows' ``metric_directions``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from benchmark.config import ConfigError  # noqa: E402
from benchmark.contract.registry import RegistryError  # noqa: E402
from benchmark.reporting.calibration import (  # noqa: E402
    Calibration,
    calibrate,
    calibration_section,
    newest_committed,
    report_attacks,
)
from benchmark.reporting.engines import ENGINE_TEXT, engine_table  # noqa: E402
from benchmark.reporting.html import write_html  # noqa: E402
from benchmark.reporting.overview import plot_paper_vs_ours, plot_privacy_utility_cost  # noqa: E402
from benchmark.reporting.scorecard import scorecard_section  # noqa: E402
from benchmark.reporting.staleness import package_drift, run_staleness  # noqa: E402
from benchmark.running.results import HIGHER_IS_BETTER, latest_rows, read_rows  # noqa: E402

# Columns the report reads; rows written before a column existed get it as missing.
REPORT_COLUMNS = ("run_id", "scenario", "defense", "defense_name", "attack", "attack_mode", "seed", "status", "error",
                  "rouge1", "mia_auc", "utility", "per_tier", "probe_rank", "probe_batch_size", "probe_observation",
                  "attack_note", "metric_directions", "threat_init", "observation", "probe_round", "start_known",
                  "server_saw", "git_commit", "null_reasons", "probe_batch", "defense_params", "tiers", "mia_auc_lo",
                  "mia_auc_hi", "tpr_at_1fpr", "tpr_at_1fpr_lo", "tpr_at_1fpr_hi", "n_members", "n_nonmembers",
                  "attack_params", "attack_name", "scenario_ref", "scenario_overrides")


def arrow(metric: str, directions: dict[str, bool] | None = None) -> str:
    """`` ↑`` where a higher value is better for the defended side, `` ↓`` where lower is."""
    if directions and metric in directions:  # True: higher means the attack succeeded more
        return " ↓" if directions[metric] else " ↑"
    if metric not in HIGHER_IS_BETTER:
        return ""
    return " ↑" if HIGHER_IS_BETTER[metric] else " ↓"


def _directions(rows: pd.DataFrame) -> dict[str, bool]:
    out: dict[str, bool] = {}
    if "metric_directions" in rows:
        for d in rows["metric_directions"]:
            if isinstance(d, dict):
                out.update({str(k): bool(v) for k, v in d.items()})
    return out


def _manifest(run: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _current_cells(manifest: dict[str, Any]) -> dict[str, str]:
    """cell_key -> cell_id of the run's current cells (from its manifest)."""
    cells = manifest.get("cells")
    if not isinstance(cells, list):
        return {}
    return {c["cell_key"]: c["cell_id"] for c in cells if isinstance(c, dict) and c.get("cell_key") and c.get("cell_id")}


def _fill_threat(row: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Rows written before the threat fields existed: take them from the run's resolved scenario."""
    scenario = (manifest.get("scenarios") or {}).get(row.get("scenario"))
    threat = scenario.get("threat") if isinstance(scenario, dict) else None
    if not isinstance(threat, dict) or row.get("threat_init") is not None:
        return row
    return {**row, "threat_init": threat.get("init"), "observation": row.get("observation") or threat.get("observation"),
            "probe_round": threat.get("round"), "probe_batch_size": row.get("probe_batch_size") or threat.get("batch_size")}


def _identify(row: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """What the run's manifest says of a row's attack and scenario label: the registered attack behind the
    label (``attack_name``) and the suite entry's base scenario and overrides (``scenario_ref``,
    ``scenario_overrides``), which the calibration table needs to know a control row from another."""
    suite = manifest.get("suite") or {}
    attacks = {a.get("label"): a.get("name") for a in suite.get("attacks") or [] if isinstance(a, dict)}
    label = row.get("attack")
    extra: dict[str, Any] = {"attack_name": row.get("attack_name") or attacks.get(label, label)}
    for spec in suite.get("scenarios") or []:
        if isinstance(spec, dict) and spec.get("label") == row.get("scenario"):
            extra.update(scenario_ref=spec.get("ref"), scenario_overrides=spec.get("overrides"))
    return {**row, **extra}


CASE_FIELDS = ("scenario", "defense", "attack", "attack_mode", "seed", "probe_batch_size", "probe_batch")


def latest_per_case(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One row per case of a run (``CASE_FIELDS``), the last finished, and how many were dropped. A
    resumed run whose settings or attack version changed plans the same case under a new cell key;
    its manifest keeps both keys (a resume of a subset must not forget the rest), so without this the
    old row would stand beside the new one."""
    last: dict[tuple, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: str(r.get("finished_at") or "")):
        last[tuple(str(r.get(k)) for k in CASE_FIELDS)] = r
    chosen = {id(r) for r in last.values()}
    kept = [r for r in rows if id(r) in chosen]
    return kept, len(rows) - len(kept)


def load_runs(run_dirs: Sequence[Path], problems: list[str] | None = None) -> pd.DataFrame:
    """The latest row per cell of each run. Rows computed with code or data the run has since moved on
    from (stale: their cell key now maps to another cell id) are left out and counted in ``problems``."""
    rows = []
    for run in run_dirs:
        run = Path(run)
        manifest = _manifest(run)
        latest = [_identify(_fill_threat(r, manifest), manifest)
                  for r in latest_rows(read_rows(run / "rows.jsonl", problems))]
        current = _current_cells(manifest)
        stale = [r for r in latest if r.get("cell_key") in current and current[r["cell_key"]] != r["cell_id"]]
        if stale and problems is not None:
            problems.append(f"{run / 'rows.jsonl'}: {len(stale)} rows were computed with older code or data and are "
                            "left out; re-run the run's command to recompute them")
        kept, superseded = latest_per_case([r for r in latest if not any(r is s for s in stale)])
        if superseded and problems is not None:
            problems.append(f"{run / 'rows.jsonl'}: {superseded} rows are superseded by a later row of the same case "
                            "(scenario, defense, attack, mode, seed, probe batch) whose settings or versions changed; "
                            "left out")
        moved = run_staleness(kept, manifest)
        if moved.stale and problems is not None:
            problems.append(moved.describe(run / "rows.jsonl", len(kept)))
        drift = package_drift(manifest)
        if drift and problems is not None:
            problems.append(f"{run / 'manifest.json'}: installed packages differ from the run's ({', '.join(drift)}); "
                            "a recompute here may differ in float detail")
        rows += [{**r, "stale": r.get("cell_id") in moved.stale} for r in kept]
    df = pd.DataFrame(rows)
    for col in REPORT_COLUMNS:
        if col not in df:
            df[col] = None
    return df


def _fmt(value: float, metric: str) -> str:
    if pd.isna(value):
        return "–"
    if metric.startswith(("bytes", "cipher")) or metric.endswith("_bytes"):
        return _bytes(value)
    if metric.endswith("_s"):
        return f"{value:.3g}"
    if metric == "agg_rel_err":
        return f"{value:.1e}"
    return f"{value:.3f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _mean_std(series: pd.Series, metric: str) -> str:
    values = pd.to_numeric(series, errors="coerce").dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return _fmt(values.iloc[0], metric)
    return f"{_fmt(values.mean(), metric)} ± {_fmt(values.std(ddof=1), metric)}"


def _markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return " ".join(str(v).split()).replace("|", "\\|")

    cols = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def headline_metric(group: pd.DataFrame) -> str:
    """The metric a privacy-matrix cell shows: the first one the attack declared (``metric_directions``)
    that has values, else membership AUC or ROUGE-1."""
    for d in group["metric_directions"]:
        if isinstance(d, dict):
            for metric in d:
                if metric in group and pd.to_numeric(group[metric], errors="coerce").notna().any():
                    return metric
    return "mia_auc" if group["mia_auc"].notna().any() else "rouge1"


def _short_reason(row: pd.Series) -> str:
    text = row.get("attack_note") if row.get("status") != "failed" else row.get("error")
    return " ".join(str(text or "no reason given").split())[:300]


def privacy_matrix(df: pd.DataFrame, notes: list[str] | None = None, calibration: Calibration | None = None) -> pd.DataFrame:
    """Scenario/defense x attack/mode. A cell is a score (over the seeds that scored), or the reason there
    is none: ``abstained [n]`` (reason n in ``notes``), ``failed``, ``incompatible``; ``not run`` where the
    suite does not pair them. Partial results say how many seeds did not score. With ``calibration``, a
    score of an attack/mode whose control did not pass says ``(uncalibrated)``."""
    attacked = df[(df["attack"].fillna("none") != "none")]
    if attacked.empty:
        return pd.DataFrame()
    attacked = attacked.assign(col=attacked["attack"] + "/" + attacked["attack_mode"].fillna(""))
    multi = attacked["scenario"].nunique() > 1
    notes = notes if notes is not None else []
    out: dict[str, dict[str, str]] = {}
    for (scenario, defense, col), group in attacked.groupby(["scenario", "defense", "col"], sort=False):
        metric = headline_metric(group)
        key = f"{scenario} / {defense}" if multi else defense
        ok = group[group["status"] == "ok"]
        parts = []
        if not ok.empty:
            mark = calibration.mark(ok.iloc[0].to_dict()) if calibration is not None else ""
            parts.append(_mean_std(ok[metric], metric) + (f" ({mark})" if mark else ""))
        for status in ("abstained", "failed", "incompatible"):
            these = group[group["status"] == status]
            if these.empty:
                continue
            word = status if ok.empty else f"{len(these)}/{len(group)} {status}"
            if status == "abstained":
                for reason in dict.fromkeys(_short_reason(r) for _, r in these.iterrows()):
                    if reason not in notes:
                        notes.append(reason)
                    word += f" [{notes.index(reason) + 1}]"
            parts.append(word)
        out.setdefault(key, {})[f"{col} ({metric}{arrow(metric, _directions(group))})"] = "; ".join(parts) or "–"
    table = pd.DataFrame(out).T.fillna("not run")
    table.index.name = "scenario / defense" if multi else "defense"
    return table.reset_index()


THREAT_TEXT = (
    "The attacker is the honest-but-curious server and knows only its transcript (every message it sent and "
    "received) plus public facts: the base model, tokenizer, template and the hyperparameters it set. "
    "*server saw*: what it could read of the attacked message. *start known*: what it could compute of the "
    "target's starting LoRA factors, which the span attacks difference the update against: `exact` where it "
    "replays the client's deterministic finalize of its own broadcast (or sent the round-1 factors itself, "
    "init=server), `estimate` where ciphertext or masked values of the broadcast stand in the way (replayed "
    "with them as zero), `none` where the client drew its factors privately (init=client, round 1) or the "
    "broadcast is all ciphertext. The public model the attacks use is the base model plus that estimate."
)


def threat_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and defense: who drew the round-1 factors, what the server observed and when, what it
    received from the target and what it knew of the target's start. Old rows lack some fields: shown as –."""
    fed = df[df["attack"].fillna("none") != "none"]
    if fed.empty:
        return pd.DataFrame()
    fields = (("threat_init", "init"), ("observation", "observation"), ("probe_round", "round"),
              ("probe_batch_size", "batch"), ("server_saw", "server saw"), ("start_known", "start known"))
    records = []
    for (scenario, defense), group in fed.groupby(["scenario", "defense"], sort=False):
        rec = {"scenario": scenario, "defense": defense}
        for col, title in fields:
            values = group[col] if col in group else pd.Series(dtype=object)
            if col == "observation" and values.isna().all():
                values = group["probe_observation"]
            uniq = [v for v in dict.fromkeys(values.dropna().tolist()) if v != ""]
            rec[title] = ", ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in uniq) or "–"
        records.append(rec)
    table = pd.DataFrame(records)
    if (table[["init", "server saw", "start known"]] == "–").all().all() and (table["observation"] == "–").all():
        return pd.DataFrame()
    return table


def summary_table(run_dir: Path, cells: set[str] | None = None) -> str:
    """A compact text table for the end of a run: scenario/defense x attack, utility and each attack's
    headline metric (naive/adaptive), or the status word where there is no score."""
    df = load_runs([run_dir])
    if cells is not None and not df.empty:
        df = df[df["cell_id"].isin(cells)]
    if df.empty:
        return "(no rows)"
    multi = df["scenario"].nunique() > 1
    attacks = [a for a in dict.fromkeys(df["attack"].fillna("none")) if a != "none"]
    header = ["scenario / defense" if multi else "defense", "utility ↑"]
    lines: list[list[str]] = []
    for (scenario, defense), group in df.groupby(["scenario", "defense"], sort=False):
        trained = group[group["status"] != "failed"]  # an abstained or incompatible attack still trained and scored utility
        utility = (_mean_std(trained.drop_duplicates("seed")["utility"], "utility") if not trained.empty
                   else group["status"].iloc[0])
        line = [f"{scenario} / {defense}" if multi else str(defense), utility]
        for attack in attacks:
            these = group[group["attack"] == attack]
            cells_ = []
            for _, by_mode in these.groupby(these["attack_mode"].fillna(""), sort=False):
                metric = headline_metric(by_mode)
                scored = by_mode[by_mode["status"] == "ok"]
                cells_.append(_mean_std(scored[metric], metric) if not scored.empty else str(by_mode["status"].iloc[0]))
            line.append("/".join(cells_) or "·")
        lines.append(line)
    for attack in attacks:
        sub = df[df["attack"] == attack]
        metric = headline_metric(sub) if not sub.empty else "rouge1"
        modes = "/".join(m for m in dict.fromkeys(sub["attack_mode"].fillna("")) if m)
        header.append(f"{attack} {metric}{arrow(metric, _directions(sub))}" + (f" ({modes})" if "/" in modes else ""))
    return "\n\n".join(_text_table([header[i] for i in cols], [[r[i] for i in cols] for r in lines])
                        for cols in _column_blocks(header, lines))


SUMMARY_WIDTH = 120  # columns of the terminal summary; attack columns wrap into blocks beyond it


def _column_blocks(header: Sequence[str], lines: Sequence[Sequence[str]], keep: int = 2,
                   width: int = SUMMARY_WIDTH) -> list[list[int]]:
    """Column indices of each block: the first ``keep`` columns, then as many of the rest as fit in
    ``width`` (always at least one per block)."""
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    base = sum(widths[:keep]) + 2 * keep
    blocks: list[list[int]] = []
    used = base
    for i in range(keep, len(header)):
        if not blocks or used + widths[i] > width:
            blocks.append(list(range(keep)))
            used = base
        blocks[-1].append(i)
        used += widths[i] + 2
    return blocks or [list(range(len(header)))]


def _text_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    table = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in lines]
    return "\n".join(t.rstrip() for t in table)


def rank_sweep(df: pd.DataFrame, attack: str = "dager", defense: str = "plain_lora") -> pd.DataFrame:
    """ROUGE-1 of ``attack`` against ``defense`` (registry defaults: the unprotected baseline) by probe
    batch size (rows) and LoRA rank (columns), where a run swept them."""
    rows = df[(df["attack"] == attack) & (df["status"] == "ok") & (df["defense_name"] == defense)]
    if rows.empty or "probe_rank" not in rows or rows["probe_rank"].nunique() * rows["probe_batch_size"].nunique() < 2:
        return pd.DataFrame()
    pivot = rows.pivot_table(index="probe_batch_size", columns="probe_rank", values="rouge1", aggfunc="mean")
    pivot = pivot.map(lambda v: _fmt(v, "rouge1"))
    pivot.columns = [f"rank {int(c)}" for c in pivot.columns]
    pivot.index.name = "batch size"
    return pivot.reset_index()


COST_COLUMNS = ("utility", "bytes_up_per_client_round", "bytes_down_per_client_round", "flexlora_broadcast_bytes",
                "cipher_bytes_up", "enc_s", "protect_s", "dec_s", "agg_s", "train_s", "epsilon", "encrypted_fraction",
                "agg_rel_err")


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    # One simulation per defense/scenario/seed: deduplicate the attack rows that share it.
    sims = _sims(df)
    if sims.empty:
        return pd.DataFrame()
    records = []
    for (scenario, defense), group in sims.groupby(["scenario", "defense"], sort=False):
        rec = {"scenario": scenario, "defense": defense}
        extra = group["extrapolation"].dropna() if "extrapolation" in group else pd.Series(dtype=object)
        if not extra.empty and isinstance(extra.iloc[0], dict):
            e = extra.iloc[0]
            rec["defense"] = f"{defense} (extrapolated: {e.get('sample_modules')} of {e.get('modules')} modules)"
        for metric in COST_COLUMNS:
            if metric in group and group[metric].notna().any():
                rec[metric + arrow(metric)] = _mean_std(group[metric], metric)
        records.append(rec)
    return pd.DataFrame(records).fillna("–")


def tier_table(df: pd.DataFrame) -> pd.DataFrame:
    sims = _sims(df)
    records = []
    for _, row in sims.iterrows():
        tiers = row.get("per_tier")
        if not isinstance(tiers, dict):
            continue
        for tier, values in tiers.items():
            records.append({"scenario": row["scenario"], "defense": row["defense"], "tier": tier,
                            "rank": values.get("rank"), "budget": values.get("budget"),
                            "bytes_up ↓": _fmt(values.get("bytes_up", float("nan")), "bytes_up"),
                            "cipher_bytes_up ↓": _fmt(values.get("cipher_bytes_up", float("nan")), "cipher"),
                            "enc_s ↓": _fmt(values.get("enc_s", float("nan")), "enc_s")})
    return pd.DataFrame(records)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _styles(names: Sequence[str]) -> dict[str, tuple[Any, str, float]]:
    """A fixed color, marker and size per name (sizes shrink so that coinciding points stay visible)."""
    colors = plt.get_cmap("tab10").colors
    return {n: (colors[i % 10], MARKERS[i % len(MARKERS)], 150 - 10 * (i % 8)) for i, n in enumerate(names)}


def _panels(n: int, width: float = 5.0, height: float = 4.0, cols: int = 2) -> tuple[Any, list[Any]]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _hbars(ax: Any, labels: Sequence[str], values: Sequence[float], title: str, colors: Sequence[Any]) -> None:
    """Horizontal bars, log scale where values span decades; zeros and missing values are written as
    text at the axis instead of being drawn at an arbitrary floor."""
    vals = [float(v) if v is not None and not pd.isna(v) else float("nan") for v in values]
    positive = [v for v in vals if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 50
    y = range(len(vals))
    ax.barh(list(y), [v if v > 0 else 0 for v in vals], color=colors)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    else:
        ax.locator_params(axis="x", nbins=4)
    if title.split(": ")[-1].startswith("bytes"):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _bytes(v) if v > 0 else "0"))
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    for i, v in enumerate(vals):
        if not v > 0:
            ax.text(0.01, i, "0" if v == 0 else "n/a", transform=trans, va="center", fontsize=8, color="dimgray")
    ax.set_title(title + (" (log)" if log else ""), fontsize=9)
    ax.grid(axis="x", alpha=0.3)


SIMULATED = ("ok", "abstained", "incompatible")  # the simulation ran; only the attack may have given up


def _sims(df: pd.DataFrame) -> pd.DataFrame:
    """One row per simulation (defense x scenario x seed) that ran, whatever its attacks did."""
    return df[df["status"].isin(SIMULATED)].drop_duplicates(subset=["scenario", "defense", "seed"])


def _same_costs(sims: pd.DataFrame, metrics: Sequence[str], tol: float = 0.1) -> list[tuple[str, list[str]]]:
    """Scenarios grouped where every defense's mean of every metric agrees within ``tol`` (relative):
    scenarios that differ only in their threat (the paper suite's) would repeat the same bars."""
    groups: list[tuple[str, list[str], pd.DataFrame]] = []
    for scenario in dict.fromkeys(sims["scenario"]):
        means = sims[sims["scenario"] == scenario].groupby("defense", sort=False)[list(metrics)].mean()
        for _first, members, ref in groups:
            if list(ref.index) == list(means.index) and all(
                    math.isclose(a, b, rel_tol=tol) or (pd.isna(a) and pd.isna(b))
                    for a, b in zip(ref.to_numpy().ravel(), means.to_numpy().ravel())):
                members.append(scenario)
                break
        else:
            groups.append((scenario, [scenario], means))
    return [(first, members) for first, members, _ in groups]


def _plot_costs(df: pd.DataFrame, path: Path) -> bool:
    """Rows: scenarios (those with the same costs share one); columns: upload bytes, encryption time,
    aggregation time; one bar per defense."""
    sims = _sims(df)
    if sims.empty:
        return False
    metrics = [m for m in ("bytes_up_per_client_round", "enc_s", "agg_s") if m in sims and sims[m].notna().any()]
    if not metrics:
        return False
    groups = _same_costs(sims, metrics)
    styles = _styles(list(dict.fromkeys(df["defense"])))
    per_row = max(sims.groupby("scenario")["defense"].nunique())
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(3.9 * len(metrics), (0.32 * per_row + 1.1) * len(groups)),
                             squeeze=False)
    for r, (scenario, members) in enumerate(groups):
        rows = sims[sims["scenario"] == scenario]
        name = scenario if len(members) == 1 else f"{scenario} (= {', '.join(members[1:])})"
        for c, metric in enumerate(metrics):
            values = rows.groupby("defense", sort=False)[metric].mean()
            _hbars(axes[r][c], list(values.index), values.tolist(), f"{name}: {metric}{arrow(metric)}" if c == 0 else
                   f"{metric}{arrow(metric)}", [styles[d][0] for d in values.index])
            if c:
                axes[r][c].set_yticklabels([])
    _save(fig, path)
    return True


def _plot_tiers(tiers: pd.DataFrame, df: pd.DataFrame, path: Path) -> bool:
    """One panel per scenario: upload bytes per client-round of each tier, per defense."""
    records = []
    for _, row in _sims(df).iterrows():
        if isinstance(row.get("per_tier"), dict):
            for tier, v in row["per_tier"].items():
                records.append({"scenario": row["scenario"], "defense": row["defense"],
                                "tier": f"{tier} (r{v.get('rank')})", "bytes_up": v.get("bytes_up")})
    if not records:
        return False
    data = pd.DataFrame(records)
    groups = _same_costs(data.rename(columns={"bytes_up": "bytes_up_t"}).assign(defense=data["defense"] + " " + data["tier"]),
                         ["bytes_up_t"])
    scenarios = [first for first, _ in groups]
    merged = {first: members for first, members in groups}
    fig, axes = _panels(len(scenarios), width=6.0, height=0.22 * data["defense"].nunique() * data["tier"].nunique() + 1.5, cols=2)
    for ax, scenario in zip(axes, scenarios):
        pivot = data[data["scenario"] == scenario].pivot_table(index="defense", columns="tier", values="bytes_up",
                                                                aggfunc="mean", sort=False)
        n_tiers = len(pivot.columns)
        height = 0.8 / max(n_tiers, 1)
        colors = plt.get_cmap("viridis")([i / max(n_tiers - 1, 1) for i in range(n_tiers)])
        trans = blended_transform_factory(ax.transAxes, ax.transData)
        for j, tier in enumerate(pivot.columns):
            ys = [i - 0.4 + height * (j + 0.5) for i in range(len(pivot.index))]
            vals = pivot[tier].tolist()
            ax.barh(ys, [v if v and v > 0 else 0 for v in vals], height=height, color=colors[j], label=tier)
            for yy, v in zip(ys, vals):
                if not (v and v > 0):
                    ax.text(0.01, yy, "0" if v == 0 else "n/a", transform=trans, va="center", fontsize=7, color="dimgray")
        ax.set_yticks(range(len(pivot.index)), list(pivot.index), fontsize=8)
        ax.invert_yaxis()
        if (pivot.to_numpy() > 0).any():
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _bytes(v)))
        ax.set_xlabel("upload bytes per client-round ↓ (log)")
        same = merged[scenario][1:]
        ax.set_title(f"{scenario}: per-tier upload cost" + (f"\n(= {', '.join(same)})" if same else ""), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="tier (rank)", title_fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return True


def load_calibration(df: pd.DataFrame, run_dirs: Sequence[Path], calibration_runs: Sequence[Path] | None = None,
                     problems: list[str] | None = None) -> Calibration:
    """The controls of the attacks in ``df``: from the report's own rows first, then from
    ``calibration_runs`` or, when that is None, the newest committed calibration run ([]: none)."""
    from benchmark.contract.plugins import ATTACKS

    attacks = report_attacks(df)
    controls = {}
    for name in dict.fromkeys(a for a, _ in attacks):
        try:
            controls[name] = ATTACKS.get(name).control
        except (RegistryError, ImportError):  # an attack this checkout no longer has: no control, no verdict
            continue
    own = ", ".join(sorted(df["run_id"].dropna().astype(str).unique())) or "these runs"
    sources: list[tuple[str, pd.DataFrame]] = [(own, df)]
    extra = list(calibration_runs or [])
    if calibration_runs is None:  # not told: the newest committed calibration run
        committed = newest_committed()
        extra = [committed] if committed is not None and committed.resolve() not in {Path(r).resolve() for r in run_dirs} else []
    for run in extra:
        sources.append((str(run), load_runs([Path(run)], problems)))
    return calibrate(sources, attacks, controls)


def write_report(run_dirs: Sequence[Path], out_dir: Path, problems: list[str] | None = None,
                 calibration_runs: Sequence[Path] | None = None) -> Path:
    """Write ``report.md``, its PNG plots and ``report.html`` (the same page, self-contained) into
    ``out_dir``; returns the markdown report's path. Unreadable
    lines of rows files and stale rows are skipped and described in ``problems``. The report opens with
    the attacks' controls (``load_calibration``: ``calibration_runs``, else the newest committed
    calibration run, after the runs' own control rows)."""
    out_dir = Path(out_dir)
    problems = problems if problems is not None else []
    df = load_runs(run_dirs, problems)
    if df.empty:
        raise ConfigError(f"no rows to report in {', '.join(map(str, run_dirs))} (the run has not finished a cell yet)")
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration = load_calibration(df, run_dirs, calibration_runs, problems)
    counts = df["status"].value_counts()
    lines = ["# shebench report", ""]
    lines.append(f"Runs: {', '.join(sorted(df['run_id'].dropna().astype(str).unique()))}. "
                 f"Rows: {len(df)} ({', '.join(f'{counts.get(s, 0)} {s}' for s in ('ok', 'failed', 'incompatible', 'abstained'))}). "
                 f"Seeds: {sorted(df['seed'].dropna().unique().tolist())}. "
                 f"Commits: {', '.join(sorted({str(c)[:10] for c in df['git_commit'].dropna()}))}.")
    lines += scorecard_section(df, calibration, _markdown)
    for name, plot in (("privacy_utility_cost.png", plot_privacy_utility_cost), ("paper_vs_ours.png", plot_paper_vs_ours)):
        if plot(df, out_dir / name, calibration):
            lines += ["", f"![{name}]({name})"]
    if report_attacks(df):
        lines += calibration_section(calibration, _markdown)
    lines += coverage(run_dirs)
    lines.append("")
    lines.append("↑ higher is better, ↓ lower is better (for the defended side). Attack metrics measure the attacker: "
                 "lower means a stronger defense. Values are mean ± std over the seeds that scored. "
                 "'abstained [n]': the attack gave up for reason n (below); it is neither a defense win nor an error. "
                 "'incompatible': the defense leaves the attack nothing to work on (e.g. ciphertext only); "
                 "'failed': an error (see Failed cells); 'not run': the suite does not pair that scenario with that attack.")
    notes: list[str] = []
    matrix = privacy_matrix(df, notes, calibration)
    sections = [
        ("Privacy matrix (attack success per defense)", matrix),
        ("Threat model (what the curious server saw and knew)", threat_table(df)),
        ("Utility and cost per defense", cost_table(df)),
        ("Per-tier cost (heterogeneous clients)", tier_table(df)),
        ("DAGER ROUGE-1 ↓ on unprotected updates as tokens outgrow the LoRA rank", rank_sweep(df)),
        ("Engines side by side (in process, Flower simulation, Flower deployment)", engine_table(df)),
    ]
    for title, table in sections:
        if table is not None and not table.empty:
            lines += ["", f"## {title}", "", _markdown(table)]
            if title.startswith("Threat model"):
                lines += ["", THREAT_TEXT]
            if title.startswith("Engines"):
                lines += ["", ENGINE_TEXT]
            if table is matrix and notes:
                lines += ["", "Abstentions:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, start=1)]
    nulls = _null_notes(df)
    if nulls:
        lines += ["", "Values written as null: " + "; ".join(nulls) + "."]
    plots = [("costs.png", _plot_costs(df, out_dir / "costs.png")),
             ("tiers.png", _plot_tiers(tier_table(df), df, out_dir / "tiers.png"))]
    lines += _extra_sections(df, out_dir, calibration)
    made = [name for name, ok in plots if ok]
    if made:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in made]
    failed = df[df["status"] == "failed"]
    if not failed.empty:
        lines += ["", "## Failed cells", "", _markdown(failed[["scenario", "defense", "attack", "attack_mode", "seed", "error"]])]
    if problems:
        lines += ["", "## Skipped lines and stale rows", ""] + [f"- {p}" for p in problems[:50]]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_html(path)
    (out_dir / "report_rows.json").write_text(json.dumps({"rows": len(df)}))
    return path


def coverage(run_dirs: Sequence[Path]) -> list[str]:
    """What each run was asked to compute (its command line) and its suite's own description, which
    says what a cut suite leaves out: a reader of the numbers sees their scope beside them."""
    lines = ["", "## What these runs cover", ""]
    latest: dict[str, tuple[str, str]] = {}  # suite name -> (written_at, description): the newest says what ran
    for run in run_dirs:
        manifest = _manifest(Path(run))
        argv = " ".join(str(a) for a in manifest.get("argv") or [])
        resumed = len(manifest.get("resumed") or [])
        lines.append(f"- `{manifest.get('run_id', Path(run).name)}`: `{argv or '?'}`" + (f" (resumed {resumed}x)" if resumed else ""))
        suite = manifest.get("suite") or {}
        name, text = str(suite.get("name", "?")), str(suite.get("description") or "").strip()
        stamp = str(manifest.get("written_at") or "")
        if text and (name not in latest or stamp >= latest[name][0]):
            latest[name] = (stamp, text)
    for name, (_, text) in latest.items():
        lines += ["", f"Suite `{name}`:", "", *(f"> {line}" if line else ">" for line in text.splitlines())]
    return lines


def _null_notes(df: pd.DataFrame) -> list[str]:
    seen: dict[str, set[str]] = {}
    for _, row in df.iterrows():
        reasons = row.get("null_reasons")
        if isinstance(reasons, dict):
            for key, why in reasons.items():
                seen.setdefault(str(key), set()).add(f"{row['defense']}: {why}")
    return [f"{key} ({', '.join(sorted(v))})" for key, v in sorted(seen.items())]


def _extra_sections(df: pd.DataFrame, out_dir: Path, calibration: Calibration | None = None) -> list[str]:
    """Sections that need specific rows: privacy with confidence intervals and the paper's DAGER table,
    and the paper comparison of cost runs."""
    from benchmark.reporting.paper import paper_comparison
    from benchmark.reporting.privacy import privacy_sections

    return privacy_sections(df, out_dir, _markdown, calibration) + paper_comparison(df, out_dir)
