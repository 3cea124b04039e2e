"""The calibration table every report opens with, and which attacks' numbers may carry a verdict.

An attack is a measuring instrument: a defense's low score means something only where the same
attack, in the same harness, reaches its floor with no defense at all. Each attack declares that
setting (``Attack.control``); the ``calibration`` suite runs every control against plain LoRA under
the scenario label ``control_<attack>``. Here the control rows are found (in the report's own runs,
then in ``--calibration`` runs or the newest committed calibration run under ``results/reference``),
scored against their floors, and every (attack, mode) is either calibrated (its control passed) or
not: a defense's number from an uncalibrated attack is marked so and gets no verdict.

A control row counts only if it ran the declared control (its run's suite entry for the label has
the declared base scenario and overrides) against plain LoRA, and only if it is not stale: a control
computed with older attack code says nothing about the attack as it is now.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.contract.attack import CONTROL_DEFENSE, Control, control_label
from benchmark.reporting.stats import Interval, bootstrap_ci
from benchmark.running.catalog import CALIBRATION_SUITE

PASS, FAIL, STALE, NOT_RUN = "pass", "fail", "stale", "not run"
UNCALIBRATED = "uncalibrated"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
CALIBRATION_TEXT = (
    "Each attack's positive control: the setting where its published method is known to work against plain LoRA "
    "(declared with the attack; `shebench run --suite calibration` runs them), the mean of its primary metric over "
    "the control's cases with a 95% interval (percentile bootstrap over cases; a membership AUC carries its own "
    "stratified interval) and n, against the declared floor. *pass*: every case scored and the mean reaches the "
    "floor; *fail*: it does not, or a case abstained or failed; *stale*: computed with code that has changed since; "
    "*not run*: no row of the declared control. A defense's number from an attack/mode that did not pass is marked "
    f"*{UNCALIBRATED}* below and gets no verdict: the instrument was not shown to work."
)


@dataclass(frozen=True)
class ControlResult:
    """One (attack, mode)'s control as measured: its status and the numbers behind it."""

    attack: str
    mode: str
    control: Control
    status: str
    value: Interval = Interval(math.nan, math.nan, math.nan, 0)
    cases: int = 0
    unscored: int = 0
    source: str = ""


@dataclass(frozen=True)
class Calibration:
    """The controls of the attacks a report covers, and the verdict gate they define."""

    results: tuple[ControlResult, ...] = ()
    sources: tuple[str, ...] = ()

    def status(self, attack: str, mode: str) -> str:
        for r in self.results:
            if r.attack == attack and r.mode == mode:
                return r.status
        return NOT_RUN

    def calibrated(self, attack: str, mode: str) -> bool:
        """Whether a number of ``attack`` (registered name) in ``mode`` may carry a verdict."""
        return self.status(attack, mode) == PASS

    def mark(self, row: Mapping[str, Any]) -> str:
        """``"uncalibrated"`` for a row whose attack/mode did not pass its control, else ``""``."""
        attack = attack_name(row)
        if attack in (None, "none"):
            return ""
        return "" if self.calibrated(attack, str(row.get("attack_mode") or "")) else UNCALIBRATED

    def table(self) -> pd.DataFrame:
        records = []
        for r in self.results:
            iv = r.value
            measured = "–" if r.cases == 0 or not math.isfinite(iv.value) else (
                f"{iv.value:.3f} [{iv.lo:.3f}, {iv.hi:.3f}] (n={iv.n})" if math.isfinite(iv.lo) else f"{iv.value:.3f} (n={iv.n})")
            if r.unscored:
                measured += f"; {r.unscored} of {r.cases} cases unscored"
            records.append({"attack": r.attack, "mode": r.mode, "control": describe_control(r.control),
                            "metric": r.control.metric, "floor": f"{r.control.floor:g}", "measured [95% CI]": measured,
                            "result": r.status})
        return pd.DataFrame(records, columns=["attack", "mode", "control", "metric", "floor", "measured [95% CI]", "result"])


def attack_name(row: Mapping[str, Any]) -> str | None:
    """The registered attack of a row (its label when the run's manifest did not say)."""
    return _first_text(row, "attack_name", "attack")


def describe_control(control: Control) -> str:
    """``base: key=value, ...``: the control's base scenario and its overrides as dotted keys."""
    return describe_setting(control.scenario, control.overrides)


def describe_setting(scenario: str, overrides: Mapping[str, Any]) -> str:
    """``scenario: key=value, ...`` with nested overrides flattened to dotted keys."""
    parts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in _flat(overrides)]
    return scenario + (": " + ", ".join(parts) if parts else "")


def _flat(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def is_control_row(row: Mapping[str, Any], controls: Mapping[str, Control]) -> bool:
    """A row of the declared control of its attack: labelled ``control_<attack>``, against plain LoRA, and
    (where its run recorded the suite entry) with the declared base scenario and overrides."""
    attack = attack_name(row)
    if attack not in controls or row.get("scenario") != control_label(attack):
        return False
    if _first_text(row, "defense_stack", "defense_name", "defense") != CONTROL_DEFENSE:
        return False
    ref, over = row.get("scenario_ref"), row.get("scenario_overrides")
    if isinstance(ref, str) and isinstance(over, Mapping):
        control = controls[attack]
        return ref == control.scenario and _plain(over) == _plain(control.overrides)
    return True


def _first_text(row: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists (a manifest's JSON against a declaration's tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def measure(rows: pd.DataFrame, control: Control) -> tuple[Interval, int, int]:
    """The control metric's mean over scored cases with its 95% interval, the number of cases and of
    unscored ones (abstained or failed). A single case that carries its own interval (a membership AUC
    with ``<metric>_lo``/``_hi``) keeps it; several are bootstrapped over cases."""
    metric = control.metric
    scored = rows[(rows["status"] == "ok")] if "status" in rows else rows
    values = pd.to_numeric(scored[metric], errors="coerce").dropna() if metric in scored else pd.Series(dtype=float)
    unscored = len(rows) - len(values)
    if values.empty:
        return Interval(math.nan, math.nan, math.nan, 0), len(rows), unscored
    if len(values) == 1 and f"{metric}_lo" in scored and f"{metric}_hi" in scored:
        row = scored.loc[values.index[0]]
        lo, hi = _num(row.get(f"{metric}_lo")), _num(row.get(f"{metric}_hi"))
        n = int(_num(row.get("n_members")) + _num(row.get("n_nonmembers"))) if math.isfinite(
            _num(row.get("n_members"))) else 1
        return Interval(float(values.iloc[0]), lo, hi, n), len(rows), unscored
    iv = bootstrap_ci(values.to_numpy(dtype=float))
    return iv, len(rows), unscored


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def judge(control: Control, value: Interval, cases: int, unscored: int, stale: bool) -> str:
    if cases == 0:
        return NOT_RUN
    if stale:
        return STALE
    return PASS if unscored == 0 and math.isfinite(value.value) and value.value >= control.floor else FAIL


def calibrate(sources: Sequence[tuple[str, pd.DataFrame]], attacks: Sequence[tuple[str, str]],
              controls: Mapping[str, Control]) -> Calibration:
    """The control of each (attack, mode) in ``attacks`` from the first source (name, rows) holding rows of
    it; an attack without a declared control is never calibrated."""
    results = []
    for attack, mode in attacks:
        control = controls.get(attack)
        if control is None:
            continue
        found = pd.DataFrame()
        where = ""
        for name, df in sources:
            if df.empty:
                continue
            mask = [is_control_row(r, controls) and attack_name(r) == attack and r.get("attack_mode") == mode
                    for r in df.to_dict("records")]
            hit = df[np.asarray(mask, dtype=bool)]
            if not hit.empty:
                found, where = hit, name
                break
        value, cases, unscored = measure(found, control) if not found.empty else (Interval(math.nan, math.nan, math.nan, 0), 0, 0)
        stale = bool(found["stale"].fillna(False).astype(bool).any()) if "stale" in found else False
        results.append(ControlResult(attack, mode, control, judge(control, value, cases, unscored, stale),
                                     value, cases, unscored, where))
    used = tuple(dict.fromkeys(r.source for r in results if r.source))
    return Calibration(tuple(results), used)


def newest_committed(reference: Path = REFERENCE_DIR) -> Path | None:
    """The most recently written run of the calibration suite under ``reference`` (None if there is none)."""
    best: tuple[str, Path] | None = None
    for manifest in sorted(reference.glob("*/manifest.json")) if reference.is_dir() else []:
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or (data.get("suite") or {}).get("name") != CALIBRATION_SUITE:
            continue
        stamp = str(data.get("written_at") or "")
        if best is None or stamp > best[0]:
            best = (stamp, manifest.parent)
    return best[1] if best else None


def report_attacks(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (registered attack, mode) that scored or abstained in ``df``, in order of appearance."""
    if df.empty or "attack" not in df:
        return []
    seen: dict[tuple[str, str], None] = {}
    for row in df.to_dict("records"):
        name = attack_name(row)
        if name and name != "none":
            seen[(name, str(row.get("attack_mode") or ""))] = None
    return list(seen)


def calibration_section(cal: Calibration, markdown: Any) -> list[str]:
    """The report's opening section: the table, where its rows came from, and what the marks mean."""
    lines = ["", "## Calibration (each attack's positive control against plain LoRA)", ""]
    if not cal.results:
        return lines + ["No attack in these runs declares a control: nothing here carries a verdict."]
    lines += [markdown(cal.table()), "", CALIBRATION_TEXT]
    where = ", ".join(f"`{_shown(s)}`" for s in cal.sources) or "none found (run `shebench run --suite calibration`)"
    lines += ["", f"Control rows from: {where}."]
    return lines


def _shown(source: str) -> str:
    """A committed run's folder relative to the repository (reports are committed; paths of one machine are not)."""
    try:
        return str(Path(source).resolve().relative_to(REFERENCE_DIR.parents[1]))
    except ValueError:
        return source
