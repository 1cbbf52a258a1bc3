#!/usr/bin/env bash
# Create .venv and install slimtune with its pinned stack. Safe to re-run: it skips the install
# when pyproject.toml and constraints.txt have not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The MLflow UI browser test (tests/orchestrator/test_ui_browser.py) drives Debian's chromium
# through playwright's python package (never `playwright install`, which downloads a browser).
if [ ! -x /usr/bin/chromium ] && [ -z "${SLIMTUNE_NO_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "slimtune: installing Debian's chromium for the MLflow UI browser test (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq >/dev/null &&
      apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } ||
      echo "slimtune: apt-get could not install chromium: the MLflow UI browser test will fail" \
        "until it is installed (apt-get install chromium)." >&2
  else
    echo "slimtune: /usr/bin/chromium is missing and this is not root with apt-get: the MLflow UI" \
      "browser test will skip. Fix: sudo apt-get install chromium (or set SLIMTUNE_NO_CHROMIUM=1" \
      "to silence this)." >&2
  fi
fi
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
