#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every check CI runs: format and lint, the test
# suite, and the quick PyTorch parity report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m parity --quick --output-dir "${PARITY_DIR:-parity-report-quick}"
