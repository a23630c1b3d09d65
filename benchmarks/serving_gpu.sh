#!/usr/bin/env bash
# On the GPU machine, from the project root: build the native backend, make the serving environment from
# the wheels gathered in /tmp/whl (nvidia-pytriton + numpy 1.26 cp312), run bench_serving.py.
#   bash benchmarks/serving_gpu.sh MODEL TARGET CONCURRENCY     e.g. llama3.2-1b core 1,16,64,256
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/cmake.log" && cmake --build build >> "$OUT/cmake.log"
V=${SERVING_VENV:-/tmp/venv}
bash benchmarks/serving_env.sh "$V" /tmp/whl
# guidellm, for --target openai --guidellm /tmp/gvenv/bin/python: its wheels gathered in /tmp/gwhl, over the
# base environment (torch, transformers, numpy 2) in a venv of their own.
if [ -d /tmp/gwhl ] && [ ! -x /tmp/gvenv/bin/python ]; then
  python3 -m venv --without-pip /tmp/gvenv  # python3 may itself be a venv: link its packages, as serving_env.sh
  gsite=$(/tmp/gvenv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  base=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for w in /tmp/gwhl/*.whl; do /tmp/gvenv/bin/python -m zipfile -e "$w" "$gsite"; done
  for p in "$base"/*; do [ -e "$gsite/$(basename "$p")" ] || ln -s "$p" "$gsite/"; done
  /tmp/gvenv/bin/python -m guidellm --version
fi
# py-spy for --py-spy (EXTRA_ARGS): its wheel gathered in /tmp/whl3 (pip download py-spy --only-binary=:all:)
if [ -d /tmp/whl3 ] && [ ! -x /tmp/pyspy/bin/py-spy ]; then
  for w in /tmp/whl3/py_spy-*.whl; do python3 -m zipfile -e "$w" /tmp/pyspy_whl; done
  mkdir -p /tmp/pyspy/bin && cp /tmp/pyspy_whl/py_spy-*.data/scripts/py-spy /tmp/pyspy/bin/ && chmod +x /tmp/pyspy/bin/py-spy
fi
python3 benchmarks/bench_serving.py --model "$1" --target "$2" --concurrency "$3" --server-python "$V/bin/python" ${EXTRA_ARGS:-} \
  --work "/tmp/bench_serving_$1" --out "$OUT" 2>&1 | tee "$OUT/bench_serving_$1_$2.log" | tail -12 || true
cp "/tmp/bench_serving_$1/server.log" "$OUT/server_$1_$2.log" 2>/dev/null || true
