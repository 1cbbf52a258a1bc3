#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, the import-linter contracts, mypy (the package
# and the benchmark scripts), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE=disabled
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/mypy
# the benchmark scripts too (a folder of scripts, not a package: paths from the repository root)
.venv/bin/mypy --explicit-package-bases benchmarks
exec .venv/bin/pytest "$@"
