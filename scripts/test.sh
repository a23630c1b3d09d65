#!/usr/bin/env bash
# The test command: sets up the environment, checks lint and format, runs every test (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q -ra "$@"
