#!/usr/bin/env bash
# Create .venv and install slimtune with its pinned stack. Safe to re-run: it skips the install
# when pyproject.toml and constraints.txt have not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.slimtune-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "slimtune: installing into .venv (about 2 minutes the first time)..."
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a CPU build; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
echo "$want" > "$stamp"
