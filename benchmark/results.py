"""Result rows: one JSON line per cell, appended and flushed as each cell ends, so an interrupted run
loses nothing already written and a re-run skips what is done."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLUMNS = (
    "run_id", "cell_id", "scenario", "defense", "defense_name", "attack", "attack_mode", "seed", "status", "error",
    "utility_metric", "utility", "eval_loss", "rouge1", "rouge2", "rougeL", "token_recall", "token_precision",
    "exact_match", "mia_auc", "tpr_at_1fpr", "tpr_at_5fpr", "n_reconstructed", "attack_note",
    "bytes_up_per_client_round", "bytes_down_per_client_round", "cipher_bytes_up", "cipher_bytes_down",
    "negotiation_bytes", "enc_s", "dec_s", "agg_s", "train_s", "attack_s", "setup_s", "sim_s", "peak_rss_mb",
    "epsilon", "dp_sigma", "dp_clip", "dp_delta", "encrypted_fraction", "agg_rel_err", "tiers", "per_tier",
    "threat_init", "observation", "probe_round", "probe_batch_size", "probe_rank", "start_known", "server_saw",
    "metric_directions", "setup_bytes", "device",
    "defense_params", "attack_params", "privacy", "setup_costs", "git_commit", "git_dirty", "finished_at",
)

# Direction of each headline metric, for the report's arrows (True: higher is better).
HIGHER_IS_BETTER = {
    "utility": True, "rouge1": False, "rouge2": False, "rougeL": False, "token_recall": False,
    "exact_match": False, "mia_auc": False, "bytes_up_per_client_round": False,
    "bytes_down_per_client_round": False, "enc_s": False, "agg_s": False, "dec_s": False, "train_s": False,
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
        fh.write(json.dumps(row, default=_jsonable, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a rows.jsonl; a torn last line from a killed run is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row per cell id (a retried cell supersedes its failure)."""
    by_cell: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_cell[row["cell_id"]] = row
    return list(by_cell.values())


def finished_cells(path: Path) -> set[str]:
    return {r["cell_id"] for r in latest_rows(read_rows(path)) if r.get("status") in ("ok", "incompatible", "abstained")}
