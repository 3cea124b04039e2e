"""The two figures a reader looks at first: every defense on one privacy-utility-cost plane, and our
DAGER figures beside the SHE-LoRA paper's.

The plane puts utility (x, 95% interval) against the strongest calibrated reconstruction attack
(y, 95% interval) with the upload bytes per client-round as the colour, one panel per threat setting;
each point carries its defense's number (the key is under the figure), so a crowded plane needs no
legend of many series. Defenses
against which every attack abstained have no score: they sit below the axis, marked as such.

The paper figure has one panel per paper method (FlexLoRA, FlexLoRA-DP, MaskCrypt, SHE-LoRA) with
the paper's three DAGER figures (batch 4, 8, 16) as stars and ours per threat setting and attack mode
as points with 95% intervals.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from benchmark.reporting import figures  # noqa: E402
from benchmark.reporting.calibration import Calibration  # noqa: E402
from benchmark.reporting.privacy import PAPER_ATTACK, PAPER_DAGER, probe_rows, summarize, utility_interval  # noqa: E402
from benchmark.reporting.scorecard import RECONSTRUCTION, SCORED, attacked_rows, strongest, threat_setting  # noqa: E402

ABSTAINED_Y = -0.12


def plot_privacy_utility_cost(df: pd.DataFrame, path: Path, calibration: Calibration | None = None) -> bool:
    """Every defense on the privacy-utility plane of each threat setting, coloured by upload bytes."""
    sims = df[df["status"].isin(SCORED)].drop_duplicates(["scenario", "defense", "seed"])
    attacked = attacked_rows(df)
    points = []  # scenario, defense, utility interval, attack score, bytes up
    for (scenario, defense), group in sims.groupby(["scenario", "defense"], sort=False):
        u = utility_interval(group)
        if u is None:
            continue
        mine = attacked[(attacked["scenario"] == scenario) & (attacked["defense"] == defense)]
        if mine.empty:
            continue
        score = strongest(mine, RECONSTRUCTION, calibration)
        if score.interval is None and not score.source.startswith("abstained"):
            continue
        up = pd.to_numeric(group.get("bytes_up_per_client_round"), errors="coerce").mean()
        points.append((scenario, str(defense), u, score, float(up) if pd.notna(up) else math.nan))
    scenarios = list(dict.fromkeys(p[0] for p in points))
    if not scenarios:
        return False
    ups = [p[4] for p in points if p[4] > 0]
    norm = LogNorm(vmin=min(ups), vmax=max(max(ups), min(ups) * 1.01)) if ups else None
    cmap = plt.get_cmap("viridis")
    numbers = {d: i for i, d in enumerate(dict.fromkeys(p[1] for p in points), start=1)}  # labels: short numbers
    fig, axes = figures.panels(len(scenarios), width=6.0, height=4.4, layout="constrained")
    for ax, scenario in zip(axes, scenarios):
        mine = [p for p in points if p[0] == scenario]
        gave_up = uncalibrated = False
        for _, _defense, u, score, up in mine:
            color = cmap(norm(up)) if norm is not None and up > 0 else "grey"
            if score.interval is None:
                y, yerr, marker, gave_up = ABSTAINED_Y, None, "x", True
            else:
                iv = score.interval
                y, marker = iv.value, "o"
                yerr = [[max(0.0, iv.value - iv.lo)], [max(0.0, iv.hi - iv.value)]] if math.isfinite(iv.lo) else None
            xerr = [[max(0.0, u.value - u.lo)], [max(0.0, u.hi - u.value)]] if math.isfinite(u.lo) else None
            hollow = score.interval is not None and not score.calibrated
            ax.errorbar([u.value], [y], xerr=xerr, yerr=yerr, fmt=marker, color=color, ms=7, capsize=2, lw=1,
                        mec=color if hollow else "black", mfc="none" if hollow else color, mew=1.5 if hollow else 0.5)
            uncalibrated = uncalibrated or hollow
        _label(ax, [(u.value, ABSTAINED_Y if s.interval is None else s.interval.value, str(numbers[d]))
                    for _, d, u, s, _ in mine])
        if gave_up:
            ax.axhline(ABSTAINED_Y / 2, color="grey", lw=0.6, ls="--")
            ax.text(0.01, ABSTAINED_Y / 2, " x below: every calibrated attack abstained (no score)", fontsize=6,
                    va="bottom", transform=ax.get_yaxis_transform(), color="grey")
        if uncalibrated:
            ax.text(0.99, 1.01, "hollow: no attack here passed its control (uncalibrated)", fontsize=6, ha="right",
                    va="bottom", transform=ax.transAxes, color="grey")
        ax.set_ylim(ABSTAINED_Y - 0.08 if gave_up else -0.05, 1.08)
        ax.set_xlabel("utility ↑ (95% CI)")
        ax.set_ylabel("strongest calibrated attack ROUGE-1 ↓ (95% CI)")
        setting = threat_setting(attacked[attacked["scenario"] == scenario].iloc[0].to_dict())
        ax.set_title(f"{scenario} ({setting})\nbest corner: bottom right", fontsize=9)
        ax.grid(alpha=0.3)
    key = [f"{i} {d}" for d, i in numbers.items()]
    per_line = 5
    fig.supxlabel("\n".join("    ".join(key[i:i + per_line]) for i in range(0, len(key), per_line)), fontsize=7,
                  x=0.02, ha="left")
    if norm is not None:
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.6, pad=0.02)
        bar.set_label("upload bytes per client-round ↓ (log)")
    figures.save(fig, path)
    return True


def _label(ax: plt.Axes, pts: list[tuple[float, float, str]]) -> None:
    """Each point's defense number beside it (the key is under the figure); points that nearly coincide
    share one label, their numbers joined by commas."""
    xs = [x for x, _, _ in pts]
    span = (max(xs) - min(xs)) or 1.0
    places: list[tuple[float, float, list[str]]] = []
    for x, y, name in sorted(pts):
        for px, py, names in places:
            if abs(px - x) < 0.03 * span and abs(py - y) < 0.04:
                names.append(name)
                break
        else:
            places.append((x, y, [name]))
    for x, y, names in places:
        ax.annotate(",".join(names), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, va="bottom")


def paper_points(df: pd.DataFrame, attack: str = PAPER_ATTACK) -> pd.DataFrame:
    """Our DAGER ROUGE-1 [95% CI] per paper method, threat setting, mode and paper batch size."""
    rows = probe_rows(df, attack)
    if rows.empty:
        return rows
    rows = rows[rows["role"].notna() & rows["probe_batch_size"].isin([4, 8, 16])].copy()
    if rows.empty:
        return rows
    rows["setting"] = [f"{r['scenario']}" for r in rows.to_dict("records")]
    return summarize(rows, ["role", "setting", "attack_mode", "probe_batch_size"]).dropna(subset=["mean"])


def plot_paper_vs_ours(df: pd.DataFrame, path: Path, calibration: Calibration | None = None,
                       attack: str = PAPER_ATTACK) -> bool:
    """A panel per paper method: the paper's DAGER ROUGE-1 at batch 4/8/16 (stars) and ours per threat
    setting and mode (points, 95% intervals), side by side at each batch size. ``calibration`` is taken
    for a uniform signature; the paper table beside it marks uncalibrated modes."""
    stats = paper_points(df, attack)
    if stats.empty:
        return False
    every = list(dict.fromkeys(stats["setting"]))
    layout = []  # (method, its settings in this panel, part, parts): the paper's stars and at most 5 of ours
    for method in (m for m in PAPER_DAGER if m in set(stats["role"])):
        keys = [k for k in every if k in set(stats.loc[stats["role"] == method, "setting"])]
        groups = figures.chunks(keys, limit=figures.MAX_SERIES - 1)
        layout += [(method, g, i, len(groups)) for i, g in enumerate(groups, start=1)]
    modes = list(dict.fromkeys(stats["attack_mode"]))
    colors = plt.get_cmap("tab10").colors
    fig, axes = figures.panels(len(layout), width=5.6, height=3.8)
    batches = [4, 8, 16]
    for ax, (method, settings, part_no, parts) in zip(axes, layout):
        slots = len(settings) * len(modes) + 1
        width = 0.8 / slots
        xs = np.arange(len(batches))
        paper = [PAPER_DAGER[method].get(b, math.nan) for b in batches]
        ax.scatter(xs - 0.4 + width / 2, paper, marker="*", s=140, color="black", label="paper (SST-2, its model)", zorder=5)
        for j, (setting, mode) in enumerate(((s, m) for s in settings for m in modes), start=1):
            part = stats[(stats["role"] == method) & (stats["setting"] == setting) & (stats["attack_mode"] == mode)]
            if part.empty:
                continue
            color = colors[every.index(setting) % 10]
            x = np.asarray([batches.index(int(b)) for b in part["probe_batch_size"]]) - 0.4 + width * (j + 0.5)
            ax.errorbar(x, part["mean"], yerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]], fmt="o",
                        mfc="none" if mode == "adaptive" else color, capsize=2, color=color,
                        label=f"ours: {setting}" if mode == modes[0] or len(modes) == 1 else None)
            for xx, n in zip(x, part["n"]):
                ax.annotate(f"n={int(n)}", (xx, -0.02), fontsize=5, ha="center", va="top", color=color)
        ax.set_xticks(xs, [f"batch {b}" for b in batches])
        ax.set_ylim(-0.1, 1.05)
        ax.set_ylabel(f"{attack} ROUGE-1 ↓")
        ax.set_title(figures.panel_title(f"{method}: paper vs ours", part_no, parts), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if "adaptive" in modes:
        handles.append(plt.Line2D([], [], marker="o", mfc="none", color="grey", ls=""))
        labels.append("hollow: adaptive attack mode (filled: naive)")
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=figures.DPI, bbox_inches="tight")
    plt.close(fig)
    return True
