#!/usr/bin/env bash
# The test command: sets up the environment (the native backend built), checks lint and format, runs the
# native tests and every Python test (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
ctest --test-dir build --output-on-failure  # the native backend's own tests (C++)
python -m pytest -q -ra "$@"
