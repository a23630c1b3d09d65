#!/usr/bin/env bash
# On the GPU machine (no network): run from the project root; results land in $OUT (default ./out).
#   bash benchmarks/run_gpu.sh [tests] [batcher] [kernels] [kernels_new] [engine] [engine8b] [throughput] [serving]
#                              [quant_tests] [quant_kernels] [quant_engine] [quant_throughput] [families]
#                              [decode_sweep] [host_step] [soak]
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
    quant_tests) python -m pytest -q tests/kernels/test_quant.py tests/kernels/test_attention.py \
                   tests/engine/test_kv_quant.py tests/engine/test_quant.py 2>&1 | tee "$OUT/gpu_quant_tests.log" | tail -30 ;;
    quant_kernels) python benchmarks/bench_quant_kernels.py ${SWEEP:+--sweep} --out "$OUT" 2>&1 | tee "$OUT/quant_kernels.log" | tail -40 ;;
    quant_engine)  # batch-1 decode and first token per quantization mode, 8B shape, fp16 first
      IFS=';' read -ra modes <<< "${QUANT_MODES:-;W8A16;W4A16;FP8;FP8 FP8}"
      for m in "${modes[@]}"; do
        read -r qa kv <<< "$m"
        python benchmarks/bench_engine.py --model llama3-8b ${qa:+--quant_algo $qa} ${kv:+--kv_cache_quant_algo $kv} \
          --out "$OUT" 2>&1 | tee -a "$OUT/quant_engine.log" | tail -12
      done ;;
    quant_throughput)  # offline throughput, fp16 and FP8 + FP8 KV cache, in one run
      for q in "" "--quant_algo FP8 --kv_cache_quant_algo FP8"; do
        python benchmarks/bench_throughput.py --overlap on --budget_s ${BUDGET_S:-20} ${CASES:+--cases $CASES} $q --out "$OUT" 2>&1 | tee -a "$OUT/quant_throughput.log" | tail -8
      done ;;
    families)  # issue 11: batch 1 and offline throughput (128/128, 2048/128) per family shape, Llama-3.1-8B too
      for m in ${FAMILY_SHAPES:-llama3-8b mistral-7b qwen2.5-7b gemma2-9b mixtral-8x7b}; do
        python benchmarks/bench_engine.py --model $m --out "$OUT" 2>&1 | tee -a "$OUT/families.log" | tail -9
        python benchmarks/bench_throughput.py --model $m --overlap on --budget_s ${BUDGET_S:-10} \
          --cases 128/128,2048/128 --out "$OUT" 2>&1 | tee -a "$OUT/families.log" | tail -4
      done ;;
    decode_sweep)  # decode attention launch configs, SWAP_AB included, over the quantized caches (issue 12)
      python benchmarks/bench_decode_attention.py --caches ${CACHES:-float8_e4m3fn,int8} --out "$OUT" 2>&1 \
        | tee "$OUT/decode_sweep.log" | grep -E "cache, B=|least total|SWAP" | tail -60 ;;
    soak)  # issue 16 on the H200: the quick start's models over a full-size shape (wheels in /tmp/whl, as serving_gpu.sh)
      cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/cmake.log" && cmake --build build >> "$OUT/cmake.log"
      bash benchmarks/serving_env.sh /tmp/venv /tmp/whl
      python benchmarks/soak.py --shape ${SOAK_SHAPE:-llama3-8b} --server-python /tmp/venv/bin/python \
        --minutes ${SOAK_MIN:-5} --warmup 60 --work /tmp/soak --out "$OUT" 2>&1 | tail -25
      cp /tmp/soak/server.log "$OUT/soak_server.log" 2>/dev/null ;;
    host_step) python benchmarks/host_step.py --batch 64,256 --gc-freeze 2>&1 | tee "$OUT/host_step.log" | tail -4 ;;
    batcher) BATCHER_TEST_DEVICE=cuda python -m pytest -q -x tests/batcher 2>&1 | tee "$OUT/gpu_batcher_tests.log" | tail -5 ;;
    serving) bash benchmarks/serving_env.sh /tmp/venv && python benchmarks/bench_serving.py --target core \
               --server-python /tmp/venv/bin/python --out "$OUT" 2>&1 | tee "$OUT/bench_serving.log" | tail -8 ;;
    *) echo "unknown: $what" ;;
  esac
done
