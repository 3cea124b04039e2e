#!/usr/bin/env bash
# The engines slice of the issue-29 recompute, and issue 28's wall-time comparison: the engines suite
# (default scenario, plain LoRA and SHE-LoRA, DAGER and MIA) run alone on this machine, one torch
# thread per process, on three engines in turn, each wall printed and kept in the RECOMPUTE marker:
#   in process and Flower's simulation runtime -> results/reference/engines (one run, two entries);
#   a loopback Flower deployment (SuperLink + two warm SuperNodes, scripts/time_engines.py's
#   time_deployment) -> results/reference/engines-deployment.
# Both folders must be gone first (`git rm -r` them: history keeps them). Then
# `bash scripts/regenerate_reports.sh` writes the combined engines report.
# Usage: bash scripts/recompute_engines.sh   (from anywhere; PYTHON=... to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$root
py=${PYTHON:-.venv/bin/python}
ref=$root/results/reference
for dir in "$ref/engines" "$ref/engines-deployment"; do
  if [[ -f $dir/rows.jsonl ]]; then
    echo "recompute_engines.sh: $dir holds rows already; git rm -r it first (history keeps it)" >&2
    exit 2
  fi
done
mkdir -p "$ref/engines" "$ref/engines-deployment"
marker="issue 29 recompute of slice engines (inproc, Flower simulation; deployment through tests/test_flower_deployment.py's Deployment), $(date -u -Iseconds) at $(git rev-parse --short HEAD)"
echo "$marker" >"$ref/engines/RECOMPUTE"
echo "$marker" >"$ref/engines-deployment/RECOMPUTE"
t0=$(date +%s)
"$py" -m benchmark run --suite engines --scenario inproc --out "$ref" --run-id engines --no-report -q
t1=$(date +%s)
echo "in process wall $((t1 - t0)) s" | tee -a "$ref/engines/RECOMPUTE"
"$py" -m benchmark run --suite engines --scenario flower --out "$ref" --run-id engines --no-report -q
t2=$(date +%s)
echo "Flower simulation wall $((t2 - t1)) s" | tee -a "$ref/engines/RECOMPUTE"
deploy_tmp=$(mktemp -d)
trap 'rm -rf "$deploy_tmp"' EXIT
"$py" - "$deploy_tmp" "$ref" <<'PY' | tee -a "$ref/engines-deployment/RECOMPUTE"
import sys
from pathlib import Path

sys.path.insert(0, "scripts")
from time_engines import time_deployment  # the loopback deployment the tests use, timed

folder, ref = Path(sys.argv[1]), sys.argv[2]
seconds = time_deployment(folder, f"--suite engines --scenario flower --out {ref} --run-id engines-deployment --no-report -q")
print(f"Flower deployment (warm SuperNodes) wall {seconds:.0f} s")
PY
