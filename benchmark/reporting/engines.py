"""The same federation on several engines, side by side: in process, Flower's simulation runtime, a
Flower deployment. The engines must agree on everything the federation computes (utility, losses,
bytes, what the attacks recover) and may differ only in wall time; this table shows both, with the
largest difference from the in-process run, so a reader sees the equivalence instead of trusting it.
"""

from __future__ import annotations

import math

import pandas as pd

METRICS = ("utility", "eval_loss", "final_train_loss", "bytes_up_per_client_round", "bytes_down_per_client_round",
           "rouge1", "mia_auc", "sim_s")
REFERENCE = "inproc"


def engine_label(row: pd.Series) -> str:
    engine = str(row.get("engine") or REFERENCE)
    runtime = row.get("engine_runtime")
    return engine if not isinstance(runtime, str) or not runtime else f"{engine} ({runtime})"


def _fmt(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if metric.startswith("bytes"):
        return f"{value:,.0f}"
    if metric.endswith("_s"):
        return f"{value:.1f}"
    return f"{value:.6g}"


def engine_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per defense and metric: the mean on each engine and the largest |difference| from in process
    (wall time compared as a ratio). Empty unless the rows hold at least two engines."""
    if df.empty or "engine" not in df:
        return pd.DataFrame()
    rows = df[df["status"].isin(("ok", "abstained", "incompatible"))].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["_engine"] = rows.apply(engine_label, axis=1)
    engines = list(dict.fromkeys(rows["_engine"]))
    if len(engines) < 2:
        return pd.DataFrame()
    engines.sort(key=lambda e: (e != REFERENCE, e))
    records = []
    for defense, group in rows.groupby("defense", sort=False):
        if group["_engine"].nunique() < 2:
            continue
        sims = group.drop_duplicates(["_engine", "seed", "scenario"])
        for metric in METRICS:
            source = group if metric in ("rouge1", "mia_auc") else sims
            if metric not in source or pd.to_numeric(source[metric], errors="coerce").isna().all():
                continue
            means = {e: float(pd.to_numeric(source.loc[source["_engine"] == e, metric], errors="coerce").mean())
                     for e in engines}
            rec = {"defense": defense, "metric": metric, **{e: _fmt(metric, v) for e, v in means.items()}}
            ref = means.get(REFERENCE, math.nan)
            others = {e: v for e, v in means.items() if e != REFERENCE and math.isfinite(v)}
            if metric == "sim_s":
                ratios = [f"x {v / ref:.2f} {e.removeprefix('flower ')}" for e, v in others.items()]
                rec["vs in process"] = ", ".join(ratios) if ref and ratios else "–"
            else:
                diffs = [abs(v - ref) for v in others.values() if math.isfinite(ref)]
                rec["vs in process"] = f"max |Δ| {max(diffs):.3g}" if diffs else "–"
            records.append(rec)
    return pd.DataFrame(records)


ENGINE_TEXT = ("The same scenario, defense and seed on each engine; means over the run's rows (attack metrics over "
               "probe cases). *vs in process*: the largest absolute difference from the in-process run (sim_s: the "
               "ratio of wall time). Bytes are the federation's own payload bytes; the transport adds framing "
               "(transport_bytes in the rows).")
