#!/usr/bin/env bash
# Set up, then run the default search (examples/digits.yaml) locally. Extra arguments go to
# `slimtune search`, e.g. `bash scripts/demo.sh --trials 8`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/slimtune search examples/digits.yaml "$@"
