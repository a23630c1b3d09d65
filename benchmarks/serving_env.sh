#!/usr/bin/env bash
# On the GPU machine: a Python environment for tritonserver's Python backend, made from the wheels in
# .whl/ (../shared/tools/stage_wheels.sh, plus a numpy 1.26 wheel for that Python).
#   bash benchmarks/serving_env.sh [/tmp/venv] [WHEEL_DIR]   then: --server-python /tmp/venv/bin/python
# WHEEL_DIR (default .whl) holds the nvidia-pytriton wheel and a numpy 1.26 cp312 wheel; the device tool
# carries at most 64 MiB a call, so they may come in two calls and be gathered in /tmp first.
# Why: the nvidia-pytriton stub (Triton 2.51) was built for numpy 1 and garbles tensors under numpy 2,
# which that machine's Python has. The venv holds numpy 1 and pytriton, and links the base environment's
# packages (torch, transformers) but those that need numpy 2.
set -euo pipefail
V=${1:-/tmp/venv}
W=${2:-.whl}
if [ ! -x "$V/bin/python" ]; then
  python3 -m venv --without-pip "$V"  # no pip needed (nor ensurepip, which some Pythons lack)
  base=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  site=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for w in "$W"/*.whl; do "$V/bin/python" -m zipfile -e "$w" "$site"; done  # run bits: the launcher sets them
  # The base environment's packages, less those built for its numpy 2: transformers imports scipy and
  # scikit-learn when they are there, and they fail under numpy 1 (seen: "Could not import module
  # 'AutoTokenizer'" in the tokenizer models).
  for p in "$base"/*; do
    case $(basename "$p") in numpy*|scipy*|sklearn*|scikit_learn*) continue ;; esac
    [ -e "$site/$(basename "$p")" ] || ln -s "$p" "$site/"
  done
fi
"$V/bin/python" -c 'import importlib.util, numpy, torch; from transformers import AutoTokenizer; assert importlib.util.find_spec("pytriton"); print("serving env:", numpy.__version__, torch.__version__)'
