"""``shebench report``: markdown tables and PNG plots from one or more runs.

Tables: the privacy matrix (defense x attack/mode, mean +- std over seeds), utility and cost per
defense, per-tier costs, and cost scenarios. Arrows mark each metric's direction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.results import HIGHER_IS_BETTER, latest_rows, read_rows  # noqa: E402


def arrow(metric: str) -> str:
    if metric not in HIGHER_IS_BETTER:
        return ""
    return " ↑" if HIGHER_IS_BETTER[metric] else " ↓"


def load_runs(run_dirs: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for run in run_dirs:
        rows += latest_rows(read_rows(Path(run) / "rows.jsonl"))
    return pd.DataFrame(rows)


def _fmt(value: float, metric: str) -> str:
    if pd.isna(value):
        return "–"
    if metric.startswith("bytes") or metric.startswith("cipher"):
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
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def privacy_matrix(df: pd.DataFrame) -> pd.DataFrame:
    attacked = df[(df["attack"] != "none") & df["status"].isin(["ok", "incompatible"])]
    if attacked.empty:
        return pd.DataFrame()
    attacked = attacked.assign(col=attacked["attack"] + "/" + attacked["attack_mode"].fillna(""))
    multi = attacked["scenario"].nunique() > 1
    out: dict[str, dict[str, str]] = {}
    for (scenario, defense, col), group in attacked.groupby(["scenario", "defense", "col"], sort=False):
        metric = "mia_auc" if group["mia_auc"].notna().any() else "rouge1"
        key = f"{scenario} / {defense}" if multi else defense
        ok = group[group["status"] == "ok"]
        value = _mean_std(ok[metric], metric) if not ok.empty else "incompatible"
        out.setdefault(key, {})[f"{col} ({metric}{arrow(metric)})"] = value
    table = pd.DataFrame(out).T.fillna("not run")
    table.index.name = "scenario / defense" if multi else "defense"
    return table.reset_index()


def rank_sweep(df: pd.DataFrame, attack: str = "dager") -> pd.DataFrame:
    """ROUGE-1 of ``attack`` by probe batch size (rows) and LoRA rank (columns), where a run swept them."""
    rows = df[(df["attack"] == attack) & (df["status"] == "ok") & (df["defense_name"] == "plain_lora")]
    if rows.empty or "probe_rank" not in rows or rows["probe_rank"].nunique() * rows["probe_batch_size"].nunique() < 2:
        return pd.DataFrame()
    pivot = rows.pivot_table(index="probe_batch_size", columns="probe_rank", values="rouge1", aggfunc="mean")
    pivot = pivot.map(lambda v: _fmt(v, "rouge1"))
    pivot.columns = [f"rank {int(c)}" for c in pivot.columns]
    pivot.index.name = "batch size"
    return pivot.reset_index()


COST_COLUMNS = ("utility", "bytes_up_per_client_round", "bytes_down_per_client_round", "cipher_bytes_up", "enc_s",
                "dec_s", "agg_s", "train_s", "epsilon", "encrypted_fraction", "agg_rel_err")


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    # One simulation per defense/scenario/seed: deduplicate the attack rows that share it.
    sims = ok.drop_duplicates(subset=["scenario", "defense", "seed"])
    records = []
    for (scenario, defense), group in sims.groupby(["scenario", "defense"], sort=False):
        rec = {"scenario": scenario, "defense": defense}
        for metric in COST_COLUMNS:
            if metric in group and group[metric].notna().any():
                rec[metric + arrow(metric)] = _mean_std(group[metric], metric)
        records.append(rec)
    return pd.DataFrame(records).fillna("–")


def tier_table(df: pd.DataFrame) -> pd.DataFrame:
    sims = df[df["status"] == "ok"].drop_duplicates(subset=["scenario", "defense", "seed"])
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


def _plot_privacy_utility(df: pd.DataFrame, path: Path) -> bool:
    attacked = df[(df["status"] == "ok") & df["rouge1"].notna()]
    if attacked.empty:
        return False
    worst = attacked.groupby("defense")["rouge1"].max()
    utility = df[df["status"] == "ok"].groupby("defense")["utility"].mean()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for defense in worst.index:
        ax.scatter(utility.get(defense), worst[defense], s=60)
        ax.annotate(defense, (utility.get(defense), worst[defense]), textcoords="offset points", xytext=(5, 4))
    ax.set_xlabel("utility (accuracy) ↑")
    ax.set_ylabel("strongest attack ROUGE-1 ↓")
    ax.set_title("Privacy vs utility (best corner: bottom right)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_costs(df: pd.DataFrame, path: Path) -> bool:
    sims = df[df["status"] == "ok"].drop_duplicates(subset=["scenario", "defense", "seed"])
    if sims.empty:
        return False
    metrics = [m for m in ("bytes_up_per_client_round", "enc_s", "agg_s") if sims[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = sims.groupby(["scenario", "defense"])[metric].mean().clip(lower=1e-6)
        labels = [f"{d}\n{s}" if sims["scenario"].nunique() > 1 else d for s, d in values.index]
        ax.bar(range(len(values)), values.values, color="tab:blue")
        ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{metric}{arrow(metric)} (log)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_tiers(tiers: pd.DataFrame, df: pd.DataFrame, path: Path) -> bool:
    sims = df[df["status"] == "ok"].drop_duplicates(subset=["scenario", "defense", "seed"])
    records = []
    for _, row in sims.iterrows():
        if isinstance(row.get("per_tier"), dict):
            for tier, v in row["per_tier"].items():
                records.append({"defense": row["defense"], "tier": f"{tier} (r{v.get('rank')})", "bytes_up": v.get("bytes_up", 0)})
    if not records:
        return False
    pivot = pd.DataFrame(records).pivot_table(index="defense", columns="tier", values="bytes_up", aggfunc="mean")
    ax = pivot.plot.bar(figsize=(7, 4), logy=True, rot=30)
    ax.set_ylabel("upload bytes per client-round ↓ (log)")
    ax.set_title("Per-tier upload cost")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return True


def write_report(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``out_dir``; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = load_runs(run_dirs)
    if df.empty:
        raise ValueError(f"no rows in {', '.join(map(str, run_dirs))}")
    for col in ("rouge1", "mia_auc", "utility", "per_tier", "attack_mode", "defense_name", "probe_rank", "probe_batch_size"):
        if col not in df:
            df[col] = None
    lines = ["# shebench report", ""]
    lines.append(f"Runs: {', '.join(sorted(df['run_id'].dropna().unique()))}. "
                 f"Rows: {len(df)} ({(df['status'] == 'ok').sum()} ok, {(df['status'] == 'failed').sum()} failed, "
                 f"{(df['status'] == 'incompatible').sum()} incompatible). Seeds: {sorted(df['seed'].dropna().unique().tolist())}. "
                 f"Commits: {', '.join(sorted({str(c)[:10] for c in df['git_commit'].dropna()}))}.")
    lines.append("")
    lines.append("↑ higher is better, ↓ lower is better. Attack metrics measure the attacker: lower means a stronger defense. "
                 "Values are mean ± std over seeds. 'incompatible': the defense leaves the attack nothing to work on "
                 "(e.g. ciphertext only); 'not run': the suite does not pair that scenario with that attack.")
    sections = [
        ("Privacy matrix (attack success per defense)", privacy_matrix(df)),
        ("Utility and cost per defense", cost_table(df)),
        ("Per-tier cost (heterogeneous clients)", tier_table(df)),
        ("DAGER ROUGE-1 ↓ on unprotected updates as tokens outgrow the LoRA rank", rank_sweep(df)),
    ]
    for title, table in sections:
        if table is not None and not table.empty:
            lines += ["", f"## {title}", "", _markdown(table)]
    plots = [("privacy_vs_utility.png", _plot_privacy_utility(df, out_dir / "privacy_vs_utility.png")),
             ("costs.png", _plot_costs(df, out_dir / "costs.png")),
             ("tiers.png", _plot_tiers(tier_table(df), df, out_dir / "tiers.png"))]
    extra = _extra_sections(df, out_dir)
    lines += extra
    made = [name for name, ok in plots if ok]
    if made:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in made]
    failed = df[df["status"] == "failed"]
    if not failed.empty:
        lines += ["", "## Failed cells", "", _markdown(failed[["scenario", "defense", "attack", "attack_mode", "seed", "error"]])]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "report_rows.json").write_text(json.dumps({"rows": len(df)}))
    return path


def _extra_sections(df: pd.DataFrame, out_dir: Path) -> list[str]:
    """Hook for sections that need specific scenarios (e.g. the paper comparison of cost runs)."""
    try:
        from benchmark.paper import paper_comparison
    except ImportError:
        return []
    return paper_comparison(df, out_dir)
