"""The scorecard at the top of every report: one row per defense, everything a reader needs to judge it.

A reader wants "how private, how useful, how costly is defense X" in one line, not assembled from
four tables. Each row gives utility with its 95% interval; per threat setting (a scenario's round,
observation and who drew the start) the strongest *calibrated* attack's score with its interval, n and
which attack/mode/batch produced it (a defense is only as strong as the best attack fielded against
it, and only an attack that passed its positive control counts); the strongest calibrated membership
attack; upload and download bytes per client-round; client and server seconds per round. The cost
columns come from the same scenario as the utility (named in the cell when it differs from the
report's reference scenario).

A verdict against plain LoRA is written only where the design can carry one: at least
``MIN_CASES`` scored cases over at least ``MIN_SEEDS`` seeds for privacy, ``MIN_SEEDS`` seeds for
utility (training noise lives between seeds, which one seed's test-set interval does not see), and
the two intervals apart. Otherwise the verdict cell says what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmark.reporting.calibration import Calibration, attack_name
from benchmark.reporting.clustered import cluster_interval, paired
from benchmark.reporting.privacy import utility_interval
from benchmark.reporting.stats import Interval

MIN_CASES = 30
MIN_SEEDS = 5
BASELINE = "plain_lora"
RECONSTRUCTION = "rouge1"
MEMBERSHIP = "mia_auc"
SCORED = ("ok", "abstained", "incompatible")  # the simulation ran; only the attack may have given up

RULE_TEXT = (
    "Scorecard: utility is accuracy on the held-out examples [95% interval: Wilson over the examples for one seed, "
    "bootstrap over seeds for several]. Each privacy column is one threat setting; its cell is the strongest attack "
    "that passed its positive control (highest mean; ↓ better for the defense; where none passed, the strongest "
    "uncalibrated one, marked so and given no verdict) with its 95% interval over "
    "probe cases (seeds as clusters), n, and which attack/mode produced it, at the batch size most defenses were probed at (in the "
    "column title). Bytes are per client-round; client s = training + "
    "protection + decryption per client-round, server s = aggregation per round. A verdict against plain LoRA is "
    f"written only with at least {MIN_CASES} paired cases over at least {MIN_SEEDS} seeds (privacy: the strongest "
    "attack against each on the same private batches, whose seed-clustered interval of the difference excludes 0) "
    f"or {MIN_SEEDS} seeds (utility: intervals that do not overlap). *(stale rows)*: some of the defense's rows were computed with code "
    "that has changed since (listed at the end of the report)."
)


@dataclass(frozen=True)
class Score:
    """The strongest calibrated attack in one threat setting, or why there is none."""

    interval: Interval | None
    source: str  # attack/mode, or the reason there is no score
    seeds: int = 0
    calibrated: bool = True  # False: no attack that passed its control scored; this is the best uncalibrated one
    cases: pd.DataFrame | None = None  # the scored rows behind the number (pairing against plain LoRA)

    def text(self) -> str:
        if self.interval is None:
            return self.source
        iv = self.interval
        spread = f" [{iv.lo:.2f}, {iv.hi:.2f}]" if math.isfinite(iv.lo) else ""
        return f"{iv.value:.2f}{spread} n={iv.n} · {self.source}" + ("" if self.calibrated else " (uncalibrated)")


def threat_setting(row: dict[str, Any]) -> str:
    """A scenario's threat in a few words: the probed round, what the server observed, who drew the start."""
    parts = []
    if _present(row.get("probe_round")):
        parts.append(f"round {int(float(row['probe_round']))}")
    if _present(row.get("observation")):
        parts.append(str(row["observation"]))
    if _present(row.get("threat_init")):
        parts.append(f"init={row['threat_init']}")
    return " ".join(parts) or "threat not recorded"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def attacked_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of attacks whose simulation ran, with their registered attack (``_attack``) and mode (``_mode``)."""
    rows = df[df["attack"].fillna("none").ne("none") & df["status"].isin(SCORED)]
    return rows.assign(_attack=[attack_name(r) or "?" for r in rows.to_dict("records")],
                       _mode=rows["attack_mode"].fillna("").astype(str))


def _directed(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows of attacks that declare ``metric`` as theirs (higher = the attack succeeded more)."""
    keep = rows["metric_directions"].map(lambda d: isinstance(d, dict) and metric in d).astype(bool)
    return rows[keep]


def strongest(rows: pd.DataFrame, metric: str, calibration: Calibration | None, batch: float | None = None) -> Score:
    """The calibrated (attack, mode) group with the highest mean ``metric`` among ``rows`` of one defense
    in one threat setting, at probe batch size ``batch`` (default: ``common_batch`` of ``rows``); a
    reason when none scored."""
    rows = _directed(rows, metric)
    if rows.empty:
        return Score(None, "not run")
    ok = rows[rows["status"] == "ok"]
    calibrated = True
    if calibration is not None:
        passed = ok[[calibration.calibrated(a, m) for a, m in zip(ok["_attack"], ok["_mode"])]]
        calibrated = not passed.empty or ok.empty
        ok = passed if calibrated else ok
    if ok.empty:
        statuses = rows["status"].value_counts()
        word = statuses.index[0]
        return Score(None, f"{word} ({statuses.iloc[0]} of {len(rows)} cases)")
    best: Score | None = None
    if metric == RECONSTRUCTION and ok["probe_batch_size"].notna().any():
        at = batch if batch is not None else common_batch(ok)
        if not (ok["probe_batch_size"] == at).any():
            return Score(None, f"not probed at batch {at:g}")
        ok = ok[ok["probe_batch_size"] == at]
    keys = ["_attack", "_mode", "probe_batch_size"]
    for (attack, mode, _batch), group in ok.groupby(keys, sort=False, dropna=False):
        values = pd.to_numeric(group[metric], errors="coerce").dropna()
        if values.empty:
            continue
        if metric == MEMBERSHIP and len(values) == 1:
            row = group.loc[values.index[0]]
            n = int(_num(row.get("n_members")) + _num(row.get("n_nonmembers"))) if _present(row.get("n_members")) else 1
            iv = Interval(float(values.iloc[0]), _num(row.get("mia_auc_lo")), _num(row.get("mia_auc_hi")), n)
        else:
            iv = cluster_interval(values.to_numpy(), group.loc[values.index, "seed"].fillna(-1).to_numpy())
        where = f"{attack}/{mode}"
        if best is None or iv.value > best.interval.value:
            best = Score(iv, where, int(group["seed"].nunique()), calibrated, group.loc[values.index])
    return best or Score(None, "no score recorded")


def common_batch(rows: pd.DataFrame) -> float:
    """The probe batch size a threat setting's scores are compared at: the one the most defenses were
    probed at (ties: the smallest, the attacker's best case). Comparing defenses at different batch
    sizes would credit a defense for its client's batch size rather than for itself."""
    sizes = pd.to_numeric(rows["probe_batch_size"], errors="coerce")
    coverage = rows.assign(_b=sizes).dropna(subset=["_b"]).groupby("_b")["defense"].nunique()
    return float(sorted(coverage.index, key=lambda b: (-coverage[b], b))[0])


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def _fmt_s(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.3g}"


def _mean(group: pd.DataFrame, *cols: str) -> float:
    """Mean over seeds of the sum of ``cols`` (a column missing from every row counts as 0; all missing: NaN)."""
    present = [c for c in cols if c in group and pd.to_numeric(group[c], errors="coerce").notna().any()]
    if not present:
        return math.nan
    total = sum(pd.to_numeric(group[c], errors="coerce").fillna(0.0) for c in present)
    return float(total.mean())


def _reference_scenario(sims: pd.DataFrame, defense: str) -> str | None:
    """The scenario a defense's utility and cost come from: the one with the most test examples."""
    mine = sims[sims["defense"] == defense]
    if mine.empty:
        return None
    n = pd.to_numeric(mine.get("utility_n"), errors="coerce").fillna(0) if "utility_n" in mine else pd.Series(0, index=mine.index)
    has_util = pd.to_numeric(mine["utility"], errors="coerce").notna()
    order = mine.assign(_n=n.where(has_util, -1)).sort_values("_n", ascending=False, kind="stable")
    return str(order.iloc[0]["scenario"])


def _apart(a: Interval | None, b: Interval | None) -> int:
    """+1 when interval a lies wholly above b, -1 wholly below, 0 when they overlap or one is missing."""
    if a is None or b is None or not (math.isfinite(a.lo) and math.isfinite(b.lo)):
        return 0
    return 1 if a.lo > b.hi else -1 if a.hi < b.lo else 0


def _paired_difference(mine: Score, base: Score) -> Interval | None:
    """This defense's strongest attack minus plain LoRA's on the same private batches (seed, batch), with
    its seed-clustered interval; None when the rows cannot be paired."""
    if mine.cases is None or base.cases is None or RECONSTRUCTION not in mine.cases or "probe_batch" not in mine.cases:
        return None
    try:
        sample = paired(mine.cases, base.cases, value=_metric_of(mine.cases)).sample
    except ValueError:  # a key repeated on one side: the pairing would be ambiguous
        return None
    return sample.interval() if sample.n else None


def _metric_of(rows: pd.DataFrame) -> str:
    return RECONSTRUCTION if pd.to_numeric(rows[RECONSTRUCTION], errors="coerce").notna().any() else MEMBERSHIP


def verdict(utility: Interval | None, utility_seeds: int, base_utility: Interval | None, base_seeds: int,
            privacy: dict[str, tuple[Score, Score]]) -> str:
    """One line against plain LoRA, from what the design supports; else what is missing.
    ``privacy`` maps a threat setting to (this defense's score, plain LoRA's score)."""
    said = []
    if min(utility_seeds, base_seeds) >= MIN_SEEDS:
        side = _apart(utility, base_utility)
        said += ["utility below plain LoRA"] if side < 0 else ["utility above plain LoRA"] if side > 0 else []
    thin = []
    for setting, (mine, base) in privacy.items():
        if mine.interval is None or base.interval is None or not (mine.calibrated and base.calibrated):
            continue
        diff = _paired_difference(mine, base)
        if diff is None or diff.n < MIN_CASES or diff.clusters < MIN_SEEDS:
            thin.append(0 if diff is None else diff.n)
            continue
        side = 1 if diff.lo > 0 else -1 if diff.hi < 0 else 0
        if side < 0:
            said.append(f"leaks less than plain LoRA ({setting})")
        elif side > 0:
            said.append(f"leaks more than plain LoRA ({setting})")
    if said:
        return "; ".join(said)
    if not thin and not any(m.interval is not None and b.interval is not None for m, b in privacy.values()) \
            and utility_seeds < MIN_SEEDS:
        return "no verdict: no threat setting scored for both it and plain LoRA, and too few seeds for utility"
    if thin or utility_seeds < MIN_SEEDS:
        return f"no verdict: {min(thin) if thin else '–'} cases, {utility_seeds} seed(s) (needs ≥{MIN_CASES} cases, ≥{MIN_SEEDS} seeds)"
    return "no verdict: intervals overlap"


def scorecard(df: pd.DataFrame, calibration: Calibration | None = None) -> pd.DataFrame:
    """One row per defense (stacks included), as described in the module docstring."""
    if df.empty:
        return pd.DataFrame()
    sims = df[df["status"].isin(SCORED)].drop_duplicates(["scenario", "defense", "seed"])
    if sims.empty:
        return pd.DataFrame()
    attacked = attacked_rows(df)
    settings: dict[str, str] = {}  # column title -> scenario
    batches: dict[str, float | None] = {}
    for scenario, group in attacked.groupby("scenario", sort=False):
        if _directed(group, RECONSTRUCTION).empty:
            continue
        probed = _directed(group[group["status"] == "ok"], RECONSTRUCTION)
        batches[scenario] = common_batch(probed) if probed["probe_batch_size"].notna().any() else None
        at = f", batch {batches[scenario]:g}" if batches[scenario] is not None else ""
        settings[f"privacy ↓ {scenario}: {threat_setting(group.iloc[0].to_dict())}{at}"] = str(scenario)
    has_mia = not _directed(attacked, MEMBERSHIP).empty
    refs = {d: _reference_scenario(sims, d) for d in dict.fromkeys(sims["defense"])}
    main_ref = pd.Series(list(refs.values())).mode().iloc[0] if refs else None
    baseline = next((d for d in refs if _is_baseline(sims, d)), None)

    def scores(defense: str) -> dict[str, Score]:
        mine = attacked[attacked["defense"] == defense]
        out = {title: strongest(mine[mine["scenario"] == scenario], RECONSTRUCTION, calibration, batches[scenario])
               for title, scenario in settings.items()}
        if has_mia:
            out["membership AUC ↓"] = strongest(mine, MEMBERSHIP, calibration)
        return out

    def utility(defense: str, scenario: str | None) -> tuple[Interval | None, int, pd.DataFrame]:
        group = sims[(sims["defense"] == defense) & (sims["scenario"] == scenario)]
        return (utility_interval(group) if not group.empty else None), int(group["seed"].nunique()), group

    base_scores = scores(baseline) if baseline else {}
    records = []
    for defense, ref in refs.items():
        u, seeds, group = utility(defense, ref)
        base_util, base_seeds, _ = utility(baseline, ref) if baseline else (None, 0, None)  # same scenario only
        mine = scores(defense)
        where = "" if ref == main_ref else f" ({ref})"
        stale = "stale" in df and bool(df.loc[df["defense"] == defense, "stale"].fillna(False).astype(bool).any())
        rec: dict[str, str] = {"defense": str(defense) + (" (stale rows)" if stale else ""),
                               "utility ↑ [95% CI]": _utility_text(u) + where}
        rec.update({title: s.text() for title, s in mine.items()})
        rec["up / down per client-round ↓"] = (f"{_fmt_bytes(_mean(group, 'bytes_up_per_client_round'))} / "
                                               f"{_fmt_bytes(_mean(group, 'bytes_down_per_client_round'))}")
        rec["client s ↓"] = _fmt_s(_mean(group, "train_s", "protect_s", "dec_s"))
        rec["server s ↓"] = _fmt_s(_mean(group, "agg_s"))
        if baseline is None:
            rec["verdict vs plain LoRA"] = "no plain LoRA in these runs"
        elif defense == baseline:
            rec["verdict vs plain LoRA"] = "(reference)"
        else:
            pairs = {title.split(": ", 1)[0].removeprefix("privacy ↓ "): (mine[title], base_scores[title])
                     for title in settings}
            rec["verdict vs plain LoRA"] = verdict(u, seeds, base_util, base_seeds, pairs)
        records.append(rec)
    out = pd.DataFrame(records)
    if not settings and out["utility ↑ [95% CI]"].str.startswith("–").all():  # costs only: nothing to judge
        out = out.drop(columns=["utility ↑ [95% CI]", "verdict vs plain LoRA"])
    return out


def _utility_text(u: Interval | None) -> str:
    if u is None:
        return "–"
    if u.n <= 1 or not math.isfinite(u.lo):
        return f"{u.value:.3f} (one evaluation, no interval recorded)"
    return f"{u.value:.3f} [{u.lo:.3f}, {u.hi:.3f}] n={u.n}"


def _is_baseline(sims: pd.DataFrame, defense: str) -> bool:
    rows = sims[sims["defense"] == defense]
    names = set(rows["defense_name"].dropna().astype(str))
    stacks = set(rows["defense_stack"].dropna().astype(str)) if "defense_stack" in rows else set()
    return names == {BASELINE} and stacks <= {BASELINE}


def scorecard_section(df: pd.DataFrame, calibration: Calibration | None, markdown: Callable[[pd.DataFrame], str]) -> list[str]:
    """The report lines of the scorecard (empty when no simulation finished)."""
    table = scorecard(df, calibration)
    if table.empty:
        return []
    return ["", "## Scorecard (one row per defense)", "", markdown(table), "", RULE_TEXT]
