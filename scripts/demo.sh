#!/usr/bin/env bash
# Set up, then run the demo search (examples/demo.yaml) locally and pick a model from its
# front. Extra arguments go to `slimtune search`, e.g. `bash scripts/demo.sh --trials 8`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/slimtune search examples/demo.yaml "$@"
echo
echo "$ slimtune select demo --max-accuracy-drop 1.0 --optimize latency_ms"
.venv/bin/slimtune select demo --max-accuracy-drop 1.0 --optimize latency_ms
