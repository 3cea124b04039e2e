"""Which rows of a run were computed with code that has changed since, and which files changed.

A row records the code fingerprint of its cell (``code_fp``); its run's manifest records the hash of
every code file its cells depended on. Here each row's cell fingerprint is computed again on the
code of this checkout: a row whose fingerprint moved is stale, and the files whose hashes differ from
the manifest's say why. Reports show stale rows marked, never silently: committed reference runs are
recomputed on purpose, not after every change.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.running import fingerprint


@dataclass(frozen=True)
class Staleness:
    """A run's stale rows (by cell id) and the code files that changed since they were computed."""

    stale: frozenset[str]
    changed: tuple[str, ...]

    def describe(self, run: Path, total: int, limit: int = 8) -> str:
        files = ", ".join(self.changed[:limit]) + (f" and {len(self.changed) - limit} more" if len(self.changed) > limit else "")
        return (f"{run}: {len(self.stale)} of {total} rows are stale: computed with code that has changed since "
                f"({files or 'files not recorded'}); shown marked stale until the run's command recomputes them")


def _attack_names(manifest: Mapping[str, Any]) -> dict[str, str]:
    attacks = (manifest.get("suite") or {}).get("attacks") or []
    return {a["label"]: a["name"] for a in attacks if isinstance(a, dict) and "label" in a and "name" in a}


@functools.cache
def _current_files(defense: str, label: str, params: str, attack: str | None, engine: str) -> tuple[Path, ...]:
    import json

    from benchmark.config import ComponentSpec
    from benchmark.contract.plugins import ATTACKS
    from benchmark.running import cell_files, defense_stack

    stack = defense_stack(ComponentSpec(defense, label, json.loads(params)))
    return tuple(cell_files(stack, ATTACKS.target(attack) if attack else None, engine))


def run_staleness(rows: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> Staleness:
    """Rows whose cell's code fingerprint on this checkout differs from the one they recorded."""
    import json

    attacks = _attack_names(manifest)
    stale: set[str] = set()
    files: set[Path] = set()
    for row in rows:
        if not row.get("code_fp"):
            continue
        label = row.get("attack") or "none"
        attack = None if label == "none" else attacks.get(label, label)
        params = row.get("defense_params") if isinstance(row.get("defense_params"), Mapping) else {}
        try:
            cell_files = _current_files(str(row.get("defense_name") or row.get("defense")), str(row.get("defense")),
                                        json.dumps(params, sort_keys=True), attack, str(row.get("engine") or "inproc"))
        except Exception:  # a defense or attack this checkout no longer has: its rows cannot be current
            stale.add(str(row.get("cell_id")))
            continue
        files.update(cell_files)
        if fingerprint.combine(fingerprint.file_hashes(list(cell_files))) != row["code_fp"]:
            stale.add(str(row.get("cell_id")))
    recorded = manifest.get("code_files") or {}
    now = fingerprint.file_hashes(sorted(files))
    changed = sorted({p for p, h in recorded.items() if now.get(p, _hash_or_none(p)) != h} | (set(now) - set(recorded)))
    return Staleness(frozenset(stale), tuple(changed) if stale else ())


def _hash_or_none(rel: str) -> str | None:
    path = fingerprint.ROOT / rel
    return fingerprint.file_hash(path) if path.is_file() else None


def package_drift(manifest: Mapping[str, Any]) -> list[str]:
    """Packages whose installed version differs from the one the run recorded (``old -> new``): rows
    recomputed here may differ in float detail even where no code of this checkout changed (seen:
    transformers 5.24 -> 5.25 moved SmolLM2 losses by ~2e-6 relative)."""
    from benchmark.running.provenance import package_versions

    recorded = manifest.get("packages") or {}
    now = package_versions()
    return [f"{name} {recorded[name]} -> {now.get(name, 'absent')}" for name in sorted(recorded)
            if now.get(name, "absent") != recorded[name]]
