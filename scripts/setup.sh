#!/usr/bin/env bash
# Sets up .venv/ with everything the project needs on a CPU machine (idempotent; seconds when done).
# torch is installed first, pinned: a bare `torch` would pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q -e ".[serve,dev]" 2>&1 | grep -v -e "^WARNING: Location" -e "^$" || true
python -c "import torch, transformers, tritonclient, pytriton; print('environment ready: torch', torch.__version__)"
# The native Triton backend (backend/native): g++, cmake and ninja come with the machine.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build > /dev/null
