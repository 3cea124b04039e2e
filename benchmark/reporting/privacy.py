"""Privacy numbers with their uncertainty: tables and figures by batch size, budget and noise.

Every figure here is a mean over probe cases (private batches x seeds) with a 95% interval that
treats seeds as clusters (``benchmark.reporting.clustered``) and its n; membership inference carries
its own stratified bootstrap intervals from the rows. The paper's DAGER table and its verdicts are in
``benchmark.reporting.paper_verdicts``. Rows whose attack abstained are counted apart: an attack that
gave up measured nothing about the defense, so it is neither averaged in as a zero nor hidden. Given
the report's ``Calibration``, a number from an attack/mode whose positive control did not pass is
marked uncalibrated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from benchmark.reporting import figures  # noqa: E402
from benchmark.reporting.calibration import UNCALIBRATED, Calibration  # noqa: E402
from benchmark.reporting.clustered import cluster_interval  # noqa: E402
from benchmark.reporting.facts import encrypted_share, row_facts  # noqa: E402
from benchmark.reporting.stats import Interval, bootstrap_ci  # noqa: E402

# The paper's DAGER ROUGE-1 on SST-2 (fractions), by method and batch size.
PAPER_DAGER: dict[str, dict[int, float]] = {
    "FlexLoRA": {4: 0.9518, 8: 0.6114, 16: 0.1027},
    "FlexLoRA-DP": {4: 0.8625, 8: 0.8028, 16: 0.6862},
    "MaskCrypt (same HE cost)": {4: 0.8916, 8: 0.6149, 16: 0.1091},
    "SHE-LoRA": {4: 0.0072, 8: 0.0098, 16: 0.0},
}
# The registered attack whose rows the paper's DAGER figures and the budget/frontier plots read (a
# default: each function takes another attack name).
PAPER_ATTACK = "dager"
PAPER_BUDGET = 0.00125  # "encrypting only 0.125% of parameters makes DAGER fail completely"
def fmt_interval(iv: Interval, pct: bool = False) -> str:
    if iv.n == 0 or not math.isfinite(iv.value):
        return "n/a"
    k = 100 if pct else 1
    digits = 1 if pct else 3
    seeds = f", seeds={iv.clusters}" if iv.clusters else ""
    return f"{iv.value * k:.{digits}f} [{iv.lo * k:.{digits}f}, {iv.hi * k:.{digits}f}] (n={iv.n}{seeds})"


def nominal_budget(row: Mapping[str, Any]) -> float:
    """The fraction of A-columns the defense is asked to encrypt for the probed client, as the defense
    declares it (NaN when the defense encrypts nothing selectively)."""
    return encrypted_share(row)


def setting(row: Mapping[str, Any]) -> str:
    """The threat setting and probed rank a row was measured in (what a budget curve may pool over)."""
    return (f"round {row.get('probe_round')} {row.get('observation')}, init={row.get('threat_init')}, "
            f"rank {row.get('probe_rank')}")


def paper_role(row: Mapping[str, Any]) -> str | None:
    """Which of the paper's methods a row plays, as its defense declares it; a selectively encrypting
    defense plays its method only at the paper's budget."""
    method = row_facts(row).get("paper_method")
    if method not in PAPER_DAGER:
        return None
    if row_facts(row).get("encrypts") == "selective" and not math.isclose(nominal_budget(row), PAPER_BUDGET, rel_tol=1e-6):
        return None
    return method


def probe_rows(df: pd.DataFrame, attack: str | None = None) -> pd.DataFrame:
    """Finished rows of probe attacks (reconstruction), with their nominal budget and paper role."""
    if df.empty or "rouge1" not in df or "probe_batch_size" not in df:
        return df.iloc[0:0]
    keep = df["status"].isin(("ok", "abstained")) & df["attack"].ne("none")
    keep &= df["metric_directions"].map(lambda d: isinstance(d, Mapping) and "rouge1" in d).astype(bool)
    if attack:
        keep &= df["attack"] == attack
    rows = df[keep].copy()
    if rows.empty:
        return rows
    rows["budget"] = [nominal_budget(r) for r in rows.to_dict("records")]
    rows["role"] = [paper_role(r) for r in rows.to_dict("records")]
    return rows


def summarize(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean ROUGE-1 with its 95% interval per group, seeds as clusters (``clustered``: probe batches of one
    seed share its partition, start and probe client, so they are not independent cases); abstentions
    counted apart."""
    records = []
    for key, group in rows.groupby(keys, sort=False, dropna=False):
        ok = group[group["status"] == "ok"]
        scored = pd.to_numeric(ok["rouge1"], errors="coerce")
        iv = (cluster_interval(scored.to_numpy(), ok["seed"].fillna(-1).to_numpy()) if scored.notna().any()
              else Interval(math.nan, math.nan, math.nan, 0))
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rec.update(mean=iv.value, lo=iv.lo, hi=iv.hi, n=iv.n, abstained=int((group["status"] == "abstained").sum()),
                   seeds=group["seed"].nunique())
        records.append(rec)
    return pd.DataFrame(records, columns=[*keys, "mean", "lo", "hi", "n", "abstained", "seeds"])


def batch_table(df: pd.DataFrame, calibration: Calibration | None = None) -> pd.DataFrame:
    """ROUGE-1 [CI] (n) per scenario x attack x mode x defense (rows) and batch size (columns); a number
    of an attack/mode whose control did not pass (``calibration``) is marked uncalibrated."""
    rows = probe_rows(df)
    if rows.empty:
        return pd.DataFrame()
    marks = {}
    if calibration is not None:
        marks = {(r["attack"], r["attack_mode"]): calibration.mark(r) for r in rows.to_dict("records")}
    stats = summarize(rows, ["scenario", "attack", "attack_mode", "defense", "probe_batch_size"])
    stats["cell"] = [(fmt_interval(Interval(m, lo, hi, int(n), int(g))) + (f" {UNCALIBRATED}" if marks.get((atk, mode)) else ""))
                     if n else f"abstained ({a})"
                     for m, lo, hi, n, g, a, atk, mode in zip(stats["mean"], stats["lo"], stats["hi"], stats["n"], stats["seeds"],
                                                              stats["abstained"], stats["attack"], stats["attack_mode"])]
    table = stats.pivot_table(index=["scenario", "attack", "attack_mode", "defense"], columns="probe_batch_size",
                              values="cell", aggfunc="first", sort=False)
    table.columns = [f"batch {int(c)}" for c in table.columns]
    return table.fillna("not run").reset_index()


REUSED_NOTE = "same as the other mode"  # a row that copies the other mode's result (and its time)


def attack_time_table(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds the attack's ``reconstruct`` took per probe case: median [min, max] (n computed cases)
    per attack (rows) and batch size (columns). Rows that reuse the other mode's result are left out,
    so a time is counted once per computation. Wall times under whatever load the run had."""
    rows = probe_rows(df)
    if rows.empty or "attack_s" not in rows:
        return pd.DataFrame()
    notes = rows["attack_note"].fillna("").astype(str) if "attack_note" in rows else pd.Series("", index=rows.index)
    reused = notes.str.contains(REUSED_NOTE, regex=False)  # runs from before the attack_reused column
    if "attack_reused" in rows:
        reused |= rows["attack_reused"].fillna(False).astype(bool)
    rows = rows[~reused]
    rows = rows.assign(attack_s=pd.to_numeric(rows["attack_s"], errors="coerce")).dropna(subset=["attack_s"])
    if rows.empty:
        return pd.DataFrame()
    stats = rows.groupby(["attack", "probe_batch_size"], sort=True)["attack_s"].agg(["median", "min", "max", "count"])
    stats["cell"] = [f"{m:.0f} [{lo:.0f}, {hi:.0f}] (n={n})" for m, lo, hi, n in
                     zip(stats["median"], stats["min"], stats["max"], stats["count"])]
    table = stats["cell"].unstack("probe_batch_size")
    table.columns = [f"batch {int(c)}" for c in table.columns]
    return table.fillna("not run").reset_index()


def mia_table(df: pd.DataFrame, calibration: Calibration | None = None) -> pd.DataFrame:
    """Membership inference per scenario x defense x mode: AUC and TPR at 1% FPR with their intervals, and
    whether a signal is detected (no verdict where ``calibration`` says the attack's control did not pass)."""
    if df.empty or "mia_auc" not in df:
        return pd.DataFrame()
    rows = df[(df["status"] == "ok") & df["mia_auc"].notna()]
    records = []
    for _, r in rows.iterrows():
        n = int((r.get("n_members") or 0) + (r.get("n_nonmembers") or 0))
        auc = Interval(r["mia_auc"], _num(r.get("mia_auc_lo")), _num(r.get("mia_auc_hi")), n)
        tpr = Interval(_num(r.get("tpr_at_1fpr")), _num(r.get("tpr_at_1fpr_lo")), _num(r.get("tpr_at_1fpr_hi")), n)
        chance = math.isfinite(auc.lo) and auc.lo <= 0.5 <= auc.hi
        params = r.get("attack_params") if isinstance(r.get("attack_params"), Mapping) else {}
        records.append({"scenario": r["scenario"], "defense": r["defense"], "mode": r["attack_mode"], "seed": r["seed"],
                        "score": r.get("mia_primary") if isinstance(r.get("mia_primary"), str) else params.get("score", ""),
                        "AUC [95% CI]": f"{auc.value:.3f} [{auc.lo:.3f}, {auc.hi:.3f}]",
                        "TPR@1%FPR [95% CI]": f"{tpr.value:.3f} [{tpr.lo:.3f}, {tpr.hi:.3f}]",
                        "members / non-members": f"{int(r.get('n_members') or 0)} / {int(r.get('n_nonmembers') or 0)}",
                        "signal": (calibration.mark(r.to_dict()) if calibration is not None else "")
                        or ("none detectable (CI includes 0.5)" if chance else "detected")})
    return pd.DataFrame(records)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ---- plots ---------------------------------------------------------------------------------------


def _panels(n: int) -> tuple[Any, list[Any]]:
    """One panel per scenario (or defense, or group of at most ``MAX_SERIES`` series), in a grid; the
    legends go under their panels (``_finish``), so the layout engine keeps the axes wide."""
    return figures.panels(n, height=4.6, layout="constrained")


def _finish(ax: Any, title: str) -> None:
    """ROUGE axes share a range, a grid and a legend outside the plot (it never covers points)."""
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()[1]
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False,
              ncol=2 if max(map(len, labels), default=0) <= 38 else 1)


def _save(fig: Any, path: Path) -> None:
    figures.save(fig, path)


def _palette(keys: pd.Series) -> dict[Any, Any]:
    colors = plt.get_cmap("tab10").colors
    return {k: colors[i % 10] for i, k in enumerate(dict.fromkeys(keys))}


def _band(ax: Any, g: pd.DataFrame, color: Any, label: str, style: dict[str, Any] | None = None) -> None:
    """A mean line over batch sizes with its 95% interval as a shaded band."""
    g = g.sort_values("probe_batch_size")
    ax.plot(g["probe_batch_size"], g["mean"], color=color, label=label, **(style or {"marker": "o", "ms": 3}))
    ax.fill_between(g["probe_batch_size"], g["lo"], g["hi"], color=color, alpha=0.12)


BASELINE_PREFIX = "plain_lora"  # series of the unprotected reference open every split panel


def _series_panels(stats: pd.DataFrame, facet: str, series: list[str]) -> list[tuple[str, list[tuple], int, int]]:
    """(facet value, series keys, part, parts) per panel: each facet's series in chunks of at most
    ``figures.MAX_SERIES``, plain LoRA's repeated in each chunk."""
    out = []
    for value in dict.fromkeys(stats[facet]):
        keys = list(dict.fromkeys(map(tuple, stats.loc[stats[facet] == value, series].itertuples(index=False))))
        pinned = [k for k in keys if str(k[0]).startswith(BASELINE_PREFIX)]
        groups = figures.chunks(keys, pinned)
        out += [(value, g, i, len(groups)) for i, g in enumerate(groups, start=1)]
    return out


def _draw_series(ax: Any, part: pd.DataFrame, keys: list[tuple], series: list[str], colors: dict[Any, Any],
                 label: Any, dashed: Any = lambda key: False) -> None:
    """Bands of each series key; coinciding series kept visible and named as such in the legend."""
    groups = {k: part[(part[series] == pd.Series(k, index=series)).all(axis=1)] for k in keys}
    twin_of = figures.twins({k: list(zip(g["probe_batch_size"], g["mean"])) for k, g in groups.items()})
    names = {k: label(k) for k in keys}
    for k, g in groups.items():
        if g.empty:
            continue
        style = figures.line_style(k, twin_of, "--" if dashed(k) else "-")
        _band(ax, g, colors[k[0]], figures.twin_label(names[k], k, twin_of, names), style)


def _batch_axis(ax: Any, part: pd.DataFrame, ylabel: str) -> None:
    """Batch sizes on a log2 axis, labelled only where measured."""
    ax.set_xscale("log", base=2)
    sizes = sorted(part["probe_batch_size"].unique())
    ax.set_xticks(sizes, [str(int(b)) for b in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("probe batch size (private examples per observed step)")
    ax.set_ylabel(ylabel)


def plot_batch(df: pd.DataFrame, path: Path, attack: str = PAPER_ATTACK) -> bool:
    """ROUGE-1 against batch size per defense (naive solid, adaptive dashed, 95% bands); a panel per scenario."""
    rows = probe_rows(df, attack)
    if rows.empty or rows["probe_batch_size"].nunique() < 2:
        return False
    stats = summarize(rows, ["scenario", "defense", "attack_mode", "probe_batch_size"]).dropna(subset=["mean"])
    palette = _palette(stats["defense"])
    layout = _series_panels(stats, "scenario", ["defense", "attack_mode"])
    fig, axes = _panels(len(layout))
    for ax, (scenario, keys, i, parts) in zip(axes, layout):
        part = stats[stats["scenario"] == scenario]
        _draw_series(ax, part, keys, ["defense", "attack_mode"], palette, lambda k: f"{k[0]} ({k[1]})",
                     lambda k: k[1] == "adaptive")
        _batch_axis(ax, part, f"{attack} ROUGE-1 ↓ (mean, 95% CI)")
        _finish(ax, figures.panel_title(f"{scenario}: {attack} ROUGE-1 by batch size", i, parts))
    _save(fig, path)
    return True


def plot_attacks(df: pd.DataFrame, path: Path, mode: str = "naive", min_n: int = 2) -> bool:
    """ROUGE-1 against batch size with the attacks side by side: a panel per defense, a line per
    attack and scenario (95% bands). Only series measured at two or more batch sizes with at least
    ``min_n`` cases per point, so single-case spot checks do not crowd the picture."""
    rows = probe_rows(df)
    if rows.empty:
        return False
    rows = rows[rows["attack_mode"] == mode]
    stats = summarize(rows, ["defense", "attack", "scenario", "probe_batch_size"]).dropna(subset=["mean"])
    stats = stats[stats["n"] >= min_n]
    sizes_per_series = stats.groupby(["defense", "attack", "scenario"])["probe_batch_size"].transform("nunique")
    stats = stats[sizes_per_series >= 2]
    by_defense = stats.groupby("defense", sort=False)["attack"].nunique()
    defenses = [d for d, k in by_defense.items() if k >= 2]
    if not defenses:
        return False
    stats = stats[stats["defense"].isin(defenses)]
    palette = _palette(stats["attack"])
    layout = _series_panels(stats, "defense", ["attack", "scenario"])
    fig, axes = _panels(len(layout))
    for ax, (defense, keys, i, parts) in zip(axes, layout):
        part = stats[stats["defense"] == defense]
        _draw_series(ax, part, keys, ["attack", "scenario"], palette, lambda k: f"{k[0]} ({k[1]})")
        _batch_axis(ax, part, "ROUGE-1 ↓ (mean, 95% CI)")
        _finish(ax, figures.panel_title(f"{defense}: attacks by batch size ({mode})", i, parts))
    _save(fig, path)
    return True


def plot_budget(df: pd.DataFrame, path: Path, batch: int = 4, attack: str = PAPER_ATTACK) -> bool:
    """ROUGE-1 against the encryption budget for SHE-LoRA and MaskCrypt at one batch size, with the
    paper's points (0.125%) overlaid; a panel per scenario."""
    rows = probe_rows(df, attack)
    if rows.empty:
        return False
    rows = rows[rows["budget"].notna() & (rows["probe_batch_size"] == batch)].copy()
    if rows.empty:
        return False
    # Scenarios that differ only in which defenses they run pool into one panel per threat setting.
    rows["scenario"] = [setting(r) for r in rows.to_dict("records")]
    spread = rows.groupby("scenario")["budget"].nunique()
    rows = rows[rows["scenario"].isin(spread[spread >= 2].index)]  # one budget is no curve: the batch plot has it
    if rows.empty:
        return False
    rows["method"] = [row_facts(r).get("paper_method") or r["defense_name"] for r in rows.to_dict("records")]
    stats = summarize(rows, ["scenario", "method", "attack_mode", "budget"]).dropna(subset=["mean"])
    scenarios = list(dict.fromkeys(stats["scenario"]))
    # a method's own curve and the paper's point for it share a colour
    colors = _palette(pd.Series([*stats["method"], *PAPER_DAGER]))
    fig, axes = _panels(len(scenarios))
    for ax, scenario in zip(axes, scenarios):
        part = stats[stats["scenario"] == scenario]
        groups = {k: g.sort_values("budget") for k, g in part.groupby(["method", "attack_mode"], sort=False)}
        twin_of = figures.twins({k: list(zip(g["budget"], g["mean"])) for k, g in groups.items()})
        names = {k: f"{k[0]} ({k[1]})" for k in groups}
        for (name, mode), g in groups.items():
            style = figures.line_style((name, mode), twin_of, "--" if mode == "adaptive" else "-")
            ax.errorbar(100 * g["budget"], g["mean"], yerr=[g["mean"] - g["lo"], g["hi"] - g["mean"]], capsize=3,
                        color=colors[name], label=figures.twin_label(names[(name, mode)], (name, mode), twin_of, names),
                        **style)
        for method in dict.fromkeys(part["method"]):
            if method in PAPER_DAGER and batch in PAPER_DAGER[method]:
                ax.scatter([100 * PAPER_BUDGET], [PAPER_DAGER[method][batch]], marker="*", s=160, color=colors[method],
                           edgecolors="black", alpha=0.6, zorder=3, label=f"paper: {method}, batch {batch}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels collide on a narrow range
        ax.set_xlabel("encryption budget (% of LoRA-A columns, log)")
        ax.set_ylabel(f"{attack} ROUGE-1 ↓ (mean, 95% CI)")
        _finish(ax, f"{attack} vs encryption budget (batch {batch})\n{scenario}")
    _save(fig, path)
    return True


def utility_interval(sims: pd.DataFrame) -> Interval | None:
    """A defense's utility with its 95% interval: over seeds (percentile bootstrap) when there are
    several, else the one evaluation's Wilson interval over its test examples (``utility_lo/hi``)."""
    util = pd.to_numeric(sims["utility"], errors="coerce").dropna()
    if util.empty:
        return None
    if len(util) > 1 or "utility_lo" not in sims:
        return bootstrap_ci(util.to_numpy())
    row = sims.loc[util.index[0]]
    lo, hi = _num(row.get("utility_lo")), _num(row.get("utility_hi"))
    n = int(_num(row.get("utility_n"))) if not math.isnan(_num(row.get("utility_n"))) else 1
    return Interval(float(util.iloc[0]), lo, hi, n)


def _sim_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(("ok", "abstained", "incompatible"))].drop_duplicates(["scenario", "defense", "seed"])


def _strongest(df: pd.DataFrame, attack: str, batch: int) -> pd.DataFrame:
    """Per scenario x defense, the attack mode with the highest mean ROUGE-1 at ``batch`` (a fielded
    attacker takes the better mode), with its interval."""
    rows = probe_rows(df, attack)
    if rows.empty:
        return rows
    rows = rows[rows["probe_batch_size"] == batch]
    stats = summarize(rows, ["scenario", "defense", "attack_mode"]).dropna(subset=["mean"])
    if stats.empty:
        return stats
    return stats.loc[stats.groupby(["scenario", "defense"])["mean"].idxmax()]


def _family(sims: pd.DataFrame, defense: str) -> tuple[str, float]:
    """A defense's curve (its stack, e.g. ``dp+plain_lora``) and its place on it (the noise)."""
    row = sims[sims["defense"] == defense].iloc[0]
    sigma = _num(row.get("dp_sigma"))
    return (str(row.get("defense_stack") or defense), sigma) if not math.isnan(sigma) else (defense, math.nan)


def frontier_table(df: pd.DataFrame, attacks: tuple[str, ...] = ("dager", "fedspy"), batch: int = 4) -> pd.DataFrame:
    """Per scenario x defense: utility [95% CI] (n test examples or seeds), epsilon, and each attack's
    strongest-mode ROUGE-1 [95% CI] (n cases) at ``batch``; ordered by curve and noise."""
    sims = _sim_rows(df)
    best = {a: _strongest(df, a, batch) for a in attacks}
    probes = probe_rows(df)
    probes = probes[probes["probe_batch_size"] == batch] if not probes.empty else probes

    def unscored(scenario: str, defense: str, attack: str) -> str:
        """Why a defense has no score: every case abstained (how many), or it was not run."""
        if probes.empty:
            return "–"
        here = probes[(probes["scenario"] == scenario) & (probes["defense"] == defense) & (probes["attack"] == attack)]
        gave_up = int((here["status"] == "abstained").sum())
        return f"abstained ({gave_up} of {len(here)} cases)" if gave_up else "–"

    if all(b.empty for b in best.values()) or "utility" not in sims:
        return pd.DataFrame()
    records = []
    for (scenario, defense), group in sims.groupby(["scenario", "defense"], sort=False):
        u = utility_interval(group)
        family, sigma = _family(group, defense)
        eps = pd.to_numeric(group.get("epsilon"), errors="coerce").dropna() if "epsilon" in group else pd.Series(dtype=float)
        rec = {"scenario": scenario, "defense": defense, "curve": family, "sigma": "–" if math.isnan(sigma) else f"{sigma:.3g}",
               "epsilon": f"{eps.max():.3g}" if not eps.empty else "–",
               "utility ↑ [95% CI] (n)": "–" if u is None else fmt_interval(u) if math.isfinite(u.lo) else
               f"{u.value:.3f} (no interval recorded)"}
        for attack, b in best.items():
            hit = b[(b["scenario"] == scenario) & (b["defense"] == defense)] if not b.empty else b
            rec[f"{attack} b{batch} ↓ (mode)"] = (f"{fmt_interval(Interval(*hit.iloc[0][['mean', 'lo', 'hi']], int(hit.iloc[0]['n']), int(hit.iloc[0]['seeds'])))}"
                                                 f" ({hit.iloc[0]['attack_mode']})") if len(hit) else unscored(scenario, defense, attack)
        rec["_order"] = (family, 0.0 if math.isnan(sigma) else sigma)
        records.append(rec)
    out = pd.DataFrame(records).sort_values(["scenario", "_order"], kind="stable").drop(columns="_order")
    return out.reset_index(drop=True)


ABSTAINED_Y = -0.12  # where the frontier plot shows defenses against which every case abstained


def _abstained_only(df: pd.DataFrame, scenario: str, attack: str, batch: int, scored: set[str]) -> list[str]:
    """Defenses of ``scenario`` whose ``attack`` cases at ``batch`` all abstained (none scored)."""
    rows = probe_rows(df, attack)
    if rows.empty:
        return []
    rows = rows[(rows["scenario"] == scenario) & (rows["probe_batch_size"] == batch) & (rows["status"] == "abstained")]
    return [d for d in dict.fromkeys(rows["defense"]) if d not in scored]


@dataclass(frozen=True)
class FrontierPoint:
    sigma: float  # nan for a defense without a noise level
    utility: Interval
    attack: Interval
    label: str


def plot_frontier(df: pd.DataFrame, path: Path, batch: int = 4, attack: str = PAPER_ATTACK) -> bool:
    """Utility [95% CI] against the strongest mode's ``attack`` ROUGE-1 [95% CI] at one batch size:
    every defense a point, the noise levels of one DP stack joined into a curve (ordered by sigma)."""
    worst = _strongest(df, attack, batch)
    if worst.empty or "utility" not in df:
        return False
    sims = _sim_rows(df)
    colors = plt.get_cmap("tab10").colors
    layout = []  # (scenario, its curves, family names in this panel, part, parts)
    for scenario in dict.fromkeys(worst["scenario"]):
        here = sims[sims["scenario"] == scenario]
        curves: dict[str, list[FrontierPoint]] = {}
        for _, w in worst[worst["scenario"] == scenario].iterrows():
            u = utility_interval(here[here["defense"] == w["defense"]])
            if u is None:
                continue
            family, sigma = _family(here, w["defense"])
            label = w["defense"] if math.isnan(sigma) else f"sigma {sigma:g}"
            curves.setdefault(family, []).append(FrontierPoint(sigma, u, Interval(w["mean"], w["lo"], w["hi"], int(w["n"])),
                                                               f"{label} ({w['attack_mode']})"))
        groups = figures.chunks(list(curves), [f for f in curves if f.startswith(BASELINE_PREFIX)])
        layout += [(scenario, curves, g, i, len(groups)) for i, g in enumerate(groups, start=1)]
    fig, axes = _panels(len(layout))
    for ax, (scenario, curves, shown, part, parts) in zip(axes, layout):
        here = sims[sims["scenario"] == scenario]
        twin_of = figures.twins({f: [(p.utility.value, p.attack.value) for p in curves[f]] for f in shown})
        for family in shown:
            pts = curves[family]
            pts.sort(key=lambda p: (math.isnan(p.sigma), p.sigma))
            color = colors[list(curves).index(family) % 10]
            twin = family in twin_of  # drawn hollow and larger over the series it equals, and named so
            rings = [f for f in shown if twin_of.get(f) == twin_of.get(family)].index(family) if twin else 0
            ax.errorbar([p.utility.value for p in pts], [p.attack.value for p in pts],
                        xerr=[[max(0.0, p.utility.value - p.utility.lo) for p in pts],
                              [max(0.0, p.utility.hi - p.utility.value) for p in pts]],
                        yerr=[[max(0.0, p.attack.value - p.attack.lo) for p in pts],
                              [max(0.0, p.attack.hi - p.attack.value) for p in pts]],
                        fmt="o-" if len(pts) > 1 else "o", capsize=3, color=color,
                        label=figures.twin_label(family, family, twin_of, {}), ms=10 + 4 * rings if twin else 6,
                        mfc="none" if twin or (part > 1 and family.startswith(BASELINE_PREFIX)) else None,
                        zorder=5 if twin else 3)
            for p in pts if len(pts) > 1 else ():
                ax.annotate(p.label, (p.utility.value, p.attack.value), fontsize=6, xytext=(3, 3),
                            textcoords="offset points", color=color)
        gave_up = _abstained_only(df, scenario, attack, batch, set(worst[worst["scenario"] == scenario]["defense"]))
        families = list(curves)
        if part < parts:
            gave_up = []  # the abstentions go on the last panel of the scenario
        for defense in gave_up:  # no annotation: the frontier table gives each one's noise and numbers
            u = utility_interval(here[here["defense"] == defense])
            if u is None:
                continue
            family = _family(here, defense)[0]
            label = None if family in families else f"{family} (abstained)"
            families += [family] if family not in families else []
            ax.errorbar([u.value], [ABSTAINED_Y], xerr=[[max(0.0, u.value - u.lo)], [max(0.0, u.hi - u.value)]], fmt="x",
                        capsize=3, color=colors[families.index(family) % 10], label=label)
        if gave_up:
            ax.axhline(ABSTAINED_Y / 2, color="grey", lw=0.6, ls="--")
            ax.text(0.01, ABSTAINED_Y / 2, " x below: the attack abstained (no reconstruction, not a score)", fontsize=6,
                    va="bottom", transform=ax.get_yaxis_transform(), color="grey")
        ax.set_xlabel("utility ↑ (95% CI: test examples, or seeds)")
        ax.set_ylabel(f"{attack} ROUGE-1 at batch {batch} ↓ (strongest mode, 95% CI)")
        _finish(ax, figures.panel_title(f"{scenario}: privacy-utility frontier\n(best corner: bottom right)", part, parts))
        if gave_up:
            ax.set_ylim(ABSTAINED_Y - 0.06, 1.03)
    _save(fig, path)
    return True


def privacy_sections(df: pd.DataFrame, out_dir: Path, markdown: Any, calibration: Calibration | None = None) -> list[str]:
    """The report's sections on privacy with uncertainty (empty when the runs hold no such rows)."""
    lines: list[str] = []
    from benchmark.reporting.paper_verdicts import paper_verdict_table, paper_verdict_text

    paper = paper_verdict_table(df, calibration=calibration)
    if not paper.empty:
        lines += ["", "## DAGER against the SHE-LoRA paper (ROUGE-1 %, mean [95% CI] (n cases, seeds))", "", markdown(paper),
                  "", paper_verdict_text()]
    rows = probe_rows(df)
    if not rows.empty and (rows["probe_batch"].notna().any() if "probe_batch" in rows else False):
        lines += ["", "## Reconstruction by batch size (ROUGE-1 mean [95% CI] (n probe cases))", "", markdown(batch_table(df, calibration))]
        times = attack_time_table(df)
        if not times.empty:
            lines += ["", "## Attack time per probe case (s, median [min, max] (n computed cases), wall under the run's load)",
                      "", markdown(times)]
    frontier = frontier_table(df)
    if not frontier.empty and frontier["curve"].duplicated().any():  # a curve: some defense at several noise levels
        lines += ["", "## Privacy-utility frontier (strongest attack mode at batch 4; utility 95% Wilson interval over the "
                  "test examples for one seed, bootstrap over seeds for several)", "", markdown(frontier)]
    mia = mia_table(df, calibration)
    if not mia.empty:
        lines += ["", "## Membership inference (AUC and TPR at 1% FPR, stratified bootstrap 95% CI)", "", markdown(mia)]
    for name, fn in (("rouge_by_batch.png", plot_batch), ("attacks_by_batch.png", plot_attacks), ("rouge_by_budget.png", plot_budget),
                     ("privacy_utility_frontier.png", plot_frontier)):
        if fn(df, out_dir / name):
            lines += ["", f"![{name}]({name})"]
    return lines
