"""Result rows: one JSON line per cell, appended and flushed as each cell ends, so an interrupted run
loses nothing already written and a re-run skips what is done."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLUMNS = (
    "run_id", "cell_id", "cell_key", "code_fp", "data_fp", "scenario", "defense", "defense_name", "defense_stack", "attack",
    "attack_mode", "seed", "status", "error",
    "utility_metric", "utility", "utility_lo", "utility_hi", "utility_n", "eval_loss", "rouge1", "rouge2", "rougeL", "token_recall", "token_precision",
    "token_set_recall", "exact_match", "mia_auc", "mia_auc_lo", "mia_auc_hi", "tpr_at_1fpr", "tpr_at_1fpr_lo", "tpr_at_1fpr_hi",
    "tpr_at_5fpr", "n_members", "n_nonmembers", "n_reconstructed", "attack_note", "metric_directions",
    "bytes_up_per_client_round", "bytes_down_per_client_round", "flexlora_broadcast_bytes", "cipher_bytes_up", "cipher_bytes_down",
    "negotiation_bytes", "enc_s", "protect_s", "dec_s", "agg_s", "train_s", "attack_s", "setup_s", "sim_s", "model_load_s",
    "eval_s", "probe_s", "time_breakdown", "extrapolation", "final_train_loss", "peak_rss_mb",
    "epsilon", "dp_sigma", "dp_clip", "dp_delta", "encrypted_fraction", "agg_rel_err", "tiers", "per_tier",
    "threat_init", "observation", "probe_round", "probe_batch_size", "probe_batch", "probe_rank", "start_known", "server_saw",
    "setup_bytes", "device", "engine", "engine_runtime", "transport_bytes", "framing_overhead_bytes",
    "framing_overhead_frac", "transport_messages",
    # what the defense declares about itself (benchmark.contract.Defense): reports read these, never names
    "encrypts", "encrypted_share", "tier_facts", "paper_method", "cost_role",
    "defense_params", "attack_params", "privacy", "setup_costs", "null_reasons", "git_commit", "git_dirty", "finished_at",
)

# Row statuses. "abstained": the attack gave up for a stated reason (attack_note): neither a defense win
# nor an error. Finished statuses are not recomputed on resume; "failed" cells are retried.
STATUSES = ("ok", "failed", "incompatible", "abstained")
FINISHED = ("ok", "incompatible", "abstained")

# Direction of the non-attack metrics, for the report's arrows (True: higher is better). Attack metrics
# take their direction from the row's ``metric_directions`` (True: higher means the attack did better).
HIGHER_IS_BETTER = {
    "utility": True, "rouge1": False, "rouge2": False, "rougeL": False, "token_recall": False,
    "exact_match": False, "mia_auc": False, "bytes_up_per_client_round": False,
    "bytes_down_per_client_round": False, "flexlora_broadcast_bytes": False, "enc_s": False, "protect_s": False,
    "agg_s": False, "dec_s": False, "train_s": False,
    "epsilon": False, "agg_rel_err": False,
}


def empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        if torn:  # a killed run left half a line: end it so the new row stays readable
            fh.write("\n")
        fh.write(dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON: an infinite or NaN number becomes null, and a top-level row says why in ``null_reasons``."""
    reasons: dict[str, str] = {}
    clean = _finite(obj, "", reasons)
    if reasons and isinstance(clean, dict):
        clean["null_reasons"] = {**(clean.get("null_reasons") or {}), **reasons}
    return json.dumps(clean, default=_jsonable, allow_nan=False, **kwargs)


def _finite(obj: Any, where: str, reasons: dict[str, str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        reasons[where or "value"] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), reasons) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v, f"{where}[{i}]", reasons) for i, v in enumerate(obj)]
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist(), where, reasons)
    return obj


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _jsonable(obj: Any) -> Any:
    return str(obj)


def read_rows(path: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows of a rows.jsonl. A line that is not a row object (a torn last line from a killed run,
    junk, undecodable bytes) is skipped and described in ``problems`` as ``file:line: why``."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        why = None
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            why = "not UTF-8"
        except json.JSONDecodeError as exc:
            last = number == len(lines)
            why = "incomplete last line (a killed run?)" if last else f"not JSON ({exc.msg})"
        else:
            if not isinstance(row, dict):
                why = f"a JSON {type(row).__name__}, not a row object"
            elif not isinstance(row.get("cell_id"), str) or row.get("status") not in STATUSES:
                why = "a JSON object without a cell_id and a known status"
        if why is None:
            rows.append(row)
        elif problems is not None:
            problems.append(f"{path}:{number}: {why}; skipped")
    return rows


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row per cell id (a retried cell supersedes its failure)."""
    by_cell: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_cell[row["cell_id"]] = row
    return list(by_cell.values())


def finished_cells(path: Path, problems: list[str] | None = None) -> set[str]:
    return {r["cell_id"] for r in latest_rows(read_rows(path, problems)) if r.get("status") in FINISHED}
