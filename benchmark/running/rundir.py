"""A run's folder: its lock, its manifest (provenance, cells, code and data hashes) and what a re-run
finds there (finished cells, stale ones and why), so a run resumes and never mixes rows silently."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.config import (
    ConfigError,
    SuiteConfig,
    check_label,
    to_dict,
)
from benchmark.running.planning import Group, cell_files, defense_stack
from benchmark.running.provenance import provenance
from benchmark.running.results import (
    FINISHED,
    dumps,
    latest_rows,
    read_rows,
)

log = logging.getLogger("shebench")


class RunBusy(ConfigError):
    """Another process is writing to the same run folder."""


def prepare_run_dir(out: Path, run_id: str, *, create: bool = True) -> Path:
    """``out/run_id``, checked: a safe run id, ``out`` a writable folder (created if missing)."""
    check_label("--run-id", run_id)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder; give a folder for the runs")
    run_dir = out / run_id
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} exists and is not a folder")
    if not create:
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r}: cannot create {str(run_dir)!r}: {exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: {str(run_dir)!r} is not writable; give another --out")
    for name in ("rows.jsonl", "manifest.json", "rounds.jsonl"):
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise ConfigError(f"{str(run_dir / name)!r} is not a file; move it away")
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` for the run: a second run into the same folder is refused, not doubled.
    The OS releases the lock when the process ends, however it ends."""
    import fcntl

    fh = open(run_dir / "run.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunBusy(f"another shebench run ({holder}) is writing to {run_dir}; wait for it to finish "
                      "or choose another --out or --run-id") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def code_and_data(groups: Sequence[Group]) -> tuple[dict[str, str], dict[str, str]]:
    """Per-file hashes of all code the planned cells depend on, and the data/model inputs by content."""
    from benchmark.contract.plugins import ATTACKS
    from benchmark.running import fingerprint

    files: set[Path] = set()
    data: dict[str, str] = {}
    for g in groups:
        data.update(fingerprint.data_inputs(g.scenario))
        stack = defense_stack(g.defense)
        for c in g.cells:
            files.update(cell_files(stack, ATTACKS.target(c.attack.name) if c.attack else None, g.scenario.engine))
    return fingerprint.file_hashes(sorted(files)), data


@dataclass
class ResumeState:
    """What a (re-)run finds in its folder: finished cells, stale ones and why, unreadable lines."""

    total: int
    done: set[str]
    stale: int
    reasons: list[str]
    problems: list[str]

    @property
    def todo(self) -> int:
        return self.total - len(self.done)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest, or {} if there is none; a broken one is moved aside (``manifest.json.broken``)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, UnicodeDecodeError) as exc:
        aside = path.with_name("manifest.json.broken")
        path.replace(aside)
        log.warning("shebench: warning: %s is unreadable (%s); moved to %s, a new one is written", path, exc, aside.name)
        return {}


def resume_state(groups: Sequence[Group], run_dir: Path, *, force: bool = False) -> ResumeState:
    problems: list[str] = []
    rows = latest_rows(read_rows(run_dir / "rows.jsonl", problems))
    cells = [c for g in groups for c in g.cells]
    planned = {c.cell_id for c in cells}
    done = set() if force else {r["cell_id"] for r in rows if r["cell_id"] in planned and r.get("status") in FINISHED}
    by_key = {c.key: c for c in cells if c.key}
    stale_rows = [r for r in rows if r.get("status") in FINISHED and r.get("cell_key") in by_key
                  and r["cell_id"] != by_key[r["cell_key"]].cell_id and by_key[r["cell_key"]].cell_id not in done]
    reasons = []
    if stale_rows and not force:
        old = read_manifest(run_dir)
        code, data = code_and_data(groups)
        if any(r.get("code_fp") != by_key[r["cell_key"]].code_fp for r in stale_rows):
            changed = _diff(old.get("code_files") or {}, code)
            reasons.append(f"code changed since they ran ({changed or 'files not recorded'})")
        if any(r.get("data_fp") != by_key[r["cell_key"]].data_fp for r in stale_rows):
            changed = _diff(old.get("data_inputs") or {}, data)
            reasons.append(f"data or model changed ({changed or 'inputs not recorded'})")
    return ResumeState(len(cells), done, 0 if force else len({r["cell_key"] for r in stale_rows}), reasons, problems)


def _diff(old: Mapping[str, str], new: Mapping[str, str], limit: int = 6) -> str:
    changed = sorted(k for k in new if old and old.get(k) != new[k]) + sorted(k for k in old if old and k not in new)
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def write_manifest(run_dir: Path, suite: SuiteConfig, groups: Sequence[Group], argv: Sequence[str], device: str,
                   note: Mapping[str, Any] | None = None) -> None:
    """Record the run. The first invocation's provenance stays; each resume is appended to ``resumed``
    with its own argv, git state, packages and machine; ``cells`` is the union of all planned cells."""
    run_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    code, data = code_and_data(groups)
    cells = [{"cell_id": c.cell_id, "cell_key": c.key, "defense": c.defense.label, "attack": c.attack.label if c.attack else "none",
              "mode": c.mode, "scenario": c.scenario, "seed": c.seed, "probe": list(c.probe) if c.probe else None}
             for g in groups for c in g.cells]
    prov = provenance()
    this = {"argv": list(argv), "device": device, **prov, "at": now, **(note or {})}
    old = read_manifest(run_dir)
    if old:
        manifest = dict(old)
        merged = {c.get("cell_key") or c["cell_id"]: c for c in old.get("cells", []) if isinstance(c, dict) and "cell_id" in c}
        merged.update({c["cell_key"] or c["cell_id"]: c for c in cells})
        manifest["cells"] = list(merged.values())
        manifest["scenarios"] = {**old.get("scenarios", {}), **{g.scenario.name: to_dict(g.scenario) for g in groups}}
        manifest["resumed"] = list(old.get("resumed", [])) + [this]
    else:
        manifest = {
            "run_id": run_dir.name, "argv": list(argv), "device": device, "suite": to_dict(suite),
            "scenarios": {g.scenario.name: to_dict(g.scenario) for g in groups}, "cells": cells,
            **prov, "written_at": now, "resumed": [],
        }
    manifest["code_files"], manifest["data_inputs"] = code, data
    tmp = run_dir / "manifest.json.tmp"
    tmp.write_text(dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(run_dir / "manifest.json")
