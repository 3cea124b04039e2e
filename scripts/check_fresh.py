"""Is every committed reference run fresh on the current code? (issue 29's test of its recompute)

A run is fresh when re-planning the commands it was run with (``shebench run <argv> --dry-run``, its
manifest's argv and each resumed one's) on the current code gives exactly the cell ids of its rows:
a changed code file, data file or setting that a cell depends on changes that cell's id. A run
written by a Flower deployment's ServerApp records ``--engine flower`` among its arguments and is
re-planned the same way. Prints one line per run; exits 1 if any run is not fresh.

    python scripts/check_fresh.py [RUN_DIR ...]     (default: every run under results/reference)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELL_LINE = re.compile(r"^([0-9a-f]{12})\s")


def planned_cells(argv: list[str]) -> set[str]:
    """The cell ids ``shebench run`` would plan today for ``argv`` (as the manifest records it)."""
    args = [a for a in argv[2:] if a not in ("-q", "--quiet")]  # drop "shebench run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "benchmark", "run", *args, "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the dry run of {' '.join(argv)} failed: {out.stderr.strip()[-500:]}")
    return {m.group(1) for line in out.stdout.splitlines() if (m := CELL_LINE.match(line))}


def row_cells(rows: Path) -> set[str]:
    return {json.loads(line)["cell_id"] for line in rows.read_text().splitlines() if line.strip()}


def check(run: Path) -> tuple[bool, str]:
    manifest = json.loads((run / "manifest.json").read_text())
    commands = [manifest["argv"], *(r["argv"] for r in manifest.get("resumed", []) if "argv" in r)]
    planned: set[str] = set()
    for argv in {tuple(a) for a in commands}:
        planned |= planned_cells(list(argv))
    have = row_cells(run / "rows.jsonl")
    missing, extra = planned - have, have - planned
    fresh = not missing and not extra
    detail = f"{len(have)} rows' cells, {len(planned)} planned"
    if not fresh:
        detail += f"; {len(missing)} planned cells without a row, {len(extra)} rows' cells no longer planned"
    return fresh, detail


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv] or sorted(p.parent for p in (ROOT / "results" / "reference").glob("*/rows.jsonl"))
    stale = 0
    for run in runs:
        fresh, detail = check(run)
        stale += not fresh
        print(f"{'fresh' if fresh else 'NOT FRESH':9}  {run.name}: {detail}", flush=True)
    print(f"{len(runs) - stale} of {len(runs)} runs fresh")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
