#!/usr/bin/env bash
# On the H100 machine (no network): run from the project root; results land in $OUT (default ./out).
#   bash benchmarks/run_gpu.sh [tests] [kernels] [engine] [throughput] [serving]
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[ $# -gt 0 ] || set -- tests engine
for what in "$@"; do
  case $what in
    tests) python -m pytest -q -s tests/engine/test_cuda.py tests/kernels 2>&1 | tee "$OUT/gpu_tests.log" | tail -40 ;;
    kernels) python benchmarks/kernels_check.py --out "$OUT" 2>&1 | tail -100 ;;  # add --sweep to re-tune
    engine) python benchmarks/bench_engine.py --hf --out "$OUT" 2>&1 | tee "$OUT/bench_engine.log" | tail -20 ;;
    engine8b) python benchmarks/bench_engine.py --model llama3-8b --build-time --out "$OUT" 2>&1 | tail -20 ;;
    throughput) python benchmarks/bench_throughput.py --out "$OUT" 2>&1 | tee "$OUT/bench_throughput.log" | tail -20 ;;
    *) echo "unknown: $what" ;;
  esac
done
