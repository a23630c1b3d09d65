#!/usr/bin/env bash
# On the H100 machine (no network): run from the project root; results land in $OUT (default ./out).
#   bash benchmarks/run_gpu.sh [tests] [batcher] [kernels] [kernels_new] [engine] [engine8b] [throughput] [serving]
# serving needs .whl/ (../shared/tools/stage_wheels.sh and a numpy 1.26 cp312 wheel): see serving_env.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[ $# -gt 0 ] || set -- tests engine
for what in "$@"; do
  case $what in
    tests) python -m pytest -q -s tests/engine/test_cuda.py tests/kernels 2>&1 | tee "$OUT/gpu_tests.log" | tail -40 ;;
    kernels) python benchmarks/kernels_check.py --out "$OUT" 2>&1 | tail -100 ;;  # add --sweep to re-tune
    kernels_new) python benchmarks/kernels_check.py --new --out "$OUT" 2>&1 | tail -120 ;;  # decode changes, old vs new
    engine) python benchmarks/bench_engine.py --hf --out "$OUT" 2>&1 | tee "$OUT/bench_engine.log" | tail -20 ;;
    engine8b) python benchmarks/bench_engine.py --model llama3-8b --build-time --out "$OUT" 2>&1 | tail -20 ;;
    throughput) python benchmarks/bench_throughput.py --overlap on --out "$OUT" 2>&1 | tee "$OUT/bench_throughput.log" | tail -20 ;;
    batcher) BATCHER_TEST_DEVICE=cuda python -m pytest -q -x tests/batcher 2>&1 | tee "$OUT/gpu_batcher_tests.log" | tail -5 ;;
    serving) bash benchmarks/serving_env.sh /tmp/venv && python benchmarks/bench_serving.py --target core \
               --server-python /tmp/venv/bin/python --out "$OUT" 2>&1 | tee "$OUT/bench_serving.log" | tail -8 ;;
    *) echo "unknown: $what" ;;
  esac
done
