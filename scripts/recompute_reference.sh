#!/usr/bin/env bash
# Recompute the committed reference runs on the current code, one resumable slice at a time (issue 29).
# Each slice writes a fresh run folder results/reference/<slice> (or <slice>-shardKofN): stop it at any
# time and run the same line again to go on where it stopped; a run never mixes rows of different code.
# A slice that keeps an old run's name (calibration, engines, baselines) starts only once the old folder
# is gone (`git rm -r` it: history keeps it), so no folder mixes rows of old and new code. When every
# shard of a slice is done, commit its folder(s), delete the run(s) it replaces (listed under
# "replaces"; a sharded slice gets a combined report line in scripts/regenerate_reports.sh), then
# `bash scripts/regenerate_reports.sh`. An unsharded slice writes its report at the end.
#
# Usage: bash scripts/recompute_reference.sh list            the slices, in order, with --dry-run estimates
#        bash scripts/recompute_reference.sh SLICE [K/N]     run one slice (shard K of N; two shards side
#                                                            by side use both cores, one torch thread each)
#
# Order: calibration first (every report reads its controls), cost alone (its seconds are the result),
# then the cheap slices, then the paper's regime (its 12 verdicts), then the long ones.
# Estimates at 2026-12-07 (1 process / 2 shards): calibration 15 / 11 min, default 16 / 9 min,
# default-baselines 7 min, cost 13 min (unsharded), stacks 9 min, engines 8 min (+ ~9 min of deployment: scripts/recompute_engines.sh, alone),
# regime 3 h 17 / 1 h 42, paper 1 h 43 / 55 min, baselines 1 h 54 / 60 min, attack-strength 1 h 23 /
# 43 min, wide-dager-fedspy 2 h 29 / 89 min, wide-utr 2 h 38 / 89 min (its shards ran in 16 and 8 min:
# UTR at batch 8 took 30 s a case, not the older code's 3 min), wide-utr-b16 (UTR at batch 16, first
# planned as cut at ~6 min a case; its shards ran in 15 and 7 min). The b16 slice repeats wide-utr's
# simulations: a run's batch sizes are in its cells' ids, so adding 16 to wide-utr would have redone
# its finished cells.
# About 15 h in one process, 8 h 30 as two shards: three sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# one torch thread per run, as every reference run: two at a time fill the 2 cores without oversubscribing
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
py=${PYTHON:-.venv/bin/python}
ref=results/reference

# slice | replaces | shebench run arguments
SLICES=(
  "calibration|calibration|--suite calibration"
  "default|default-7f16dccc|"
  "default-baselines|default-baselines|--defense secagg,dp+secagg,she_lora_private_start"
  "cost|cost-e5a704ed cost-baselines|--suite cost"
  "stacks|stacks-0ad913eb|--suite stacks"
  "engines|engines|--suite engines --scenario inproc,flower"
  "regime|(new)|--suite paper --scenario regime"
  "paper|paper-a paper-b paper-c paper-d paper-e|--suite paper --scenario r1_server,r256,mia,r1_client,r1_gp,r1_new_attacks"
  "baselines|baselines baselines-frontier baselines-frontier2|--suite benchmark/suites/baselines.toml"
  "attack-strength|attack-strength-dp attack-strength-r1 attack-strength-r256|--suite attack_strength"
  "wide-dager-fedspy|paper-f1 paper-f2 paper-f2b paper-f2c paper-g|--suite paper --scenario r1_wide --attack dager,fedspy"
  "wide-utr|(with wide-dager-fedspy)|--suite paper --scenario r1_wide --attack utr --set threat.batch_sizes=[4,8]"
  "wide-utr-b16|(with wide-dager-fedspy)|--suite paper --scenario r1_wide --attack utr --set threat.batch_sizes=[16]"
)

args_of() {
  local entry
  for entry in "${SLICES[@]}"; do
    IFS='|' read -r name _ args <<<"$entry"
    [[ $name == "$1" ]] && { echo "$args"; return 0; }
  done
  echo "recompute_reference.sh: unknown slice '$1'; valid: $(for e in "${SLICES[@]}"; do printf '%s ' "${e%%|*}"; done)" >&2
  return 2
}

if [[ ${1:-list} == list ]]; then
  for entry in "${SLICES[@]}"; do
    IFS='|' read -r name replaces args <<<"$entry"
    echo "== $name (replaces: $replaces): shebench run $args"
    # shellcheck disable=SC2086
    "$py" -m benchmark run $args --dry-run 2>&1 | grep -E "cells in|estimated total" || true
  done
  exit 0
fi

slice=$1
args=$(args_of "$slice")
# the engines slice also times a loopback deployment, alone: its own script (issue 28's walls)
[[ $slice == engines ]] && exec bash scripts/recompute_engines.sh
shard=()
if [[ -n ${2:-} ]]; then shard=(--shard "$2" --no-report); fi
# a folder this recompute started carries its marker; rows without one are an older run's
for dir in "$ref/$slice" "$ref/$slice"-shard*; do
  if [[ -f $dir/rows.jsonl && ! -f $dir/RECOMPUTE ]]; then
    echo "recompute_reference.sh: $dir holds rows of an older run; git rm -r it first (history keeps it)" >&2
    exit 2
  fi
done
run_dir=$ref/$slice
[[ -n ${2:-} ]] && run_dir=$ref/$slice-shard${2%%/*}of${2##*/}
mkdir -p "$run_dir"
[[ -f $run_dir/RECOMPUTE ]] || echo "issue 29 recompute of slice $slice, started $(date -u -Iseconds) at $(git rev-parse --short HEAD)" >"$run_dir/RECOMPUTE"
# shellcheck disable=SC2086
exec "$py" -m benchmark run $args "${shard[@]}" --out "$ref" --run-id "$slice"
