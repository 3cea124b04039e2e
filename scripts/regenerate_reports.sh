#!/usr/bin/env bash
# Rewrite every committed report under results/reference from its committed rows (no recompute):
# each run's own report, and the combined reports named below. Derived files (report.md, report.html,
# report_rows.json, *.png) are removed first, so a figure the report no longer draws does not linger.
# Usage: bash scripts/regenerate_reports.sh   (from the repository root, after setup)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
py=${PYTHON:-.venv/bin/python}
ref=results/reference

clean() { rm -f "$1"/report.md "$1"/report.html "$1"/report_rows.json "$1"/*.png; }

report() {  # report OUT RUN...
  local out=$1; shift
  clean "$out"
  "$py" -m benchmark report "$@" --out "$out" 2>/dev/null | tail -1
}

# calibration first: the other reports read their controls from it
report "$ref/calibration" "$ref/calibration"
for run in "$ref"/*/; do
  run=${run%/}
  [[ -f $run/rows.jsonl && -f $run/report.md && $run != "$ref/calibration" ]] && report "$run" "$run"
done
# the paper's regime (issue 29: its 12 verdicts), recomputed as two shards
report "$ref/regime" "$ref"/regime-shard1of2 "$ref"/regime-shard2of2
report "$ref/paper-report" "$ref"/regime-shard1of2 "$ref"/regime-shard2of2 "$ref"/paper-shard1of2 "$ref"/paper-shard2of2 \
  "$ref"/wide-dager-fedspy-shard1of2 "$ref"/wide-dager-fedspy-shard2of2 "$ref"/wide-utr-shard1of2 "$ref"/wide-utr-shard2of2 \
  "$ref"/wide-utr-b16-shard1of2 "$ref"/wide-utr-b16-shard2of2
report "$ref/baselines-all" "$ref"/baselines-shard1of2 "$ref"/baselines-shard2of2
report "$ref/attack-strength" "$ref"/attack-strength-shard1of2 "$ref"/attack-strength-shard2of2
report "$ref/engines" "$ref"/engines "$ref"/engines-deployment
