#!/usr/bin/env bash
# One command from a fresh machine to generated text: environment, a tiny Llama checkpoint and tokenizer
# (random weights, no download), its engine, and a generation from a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
WORK=${WORK:-work_dirs/quickstart}
python -m tensorrt_llm.tools.tiny_model "$WORK/hf"
trtllm-build --model_dir "$WORK/hf" --dtype float32 --output_dir "$WORK/engine" \
  --max_batch_size 8 --max_input_len 128 --max_output_len 64 --tokens_per_block 16
trtllm-run --engine_dir "$WORK/engine" --tokenizer_dir "$WORK/hf" \
  --input_text "How do I count to nine in French?" --max_output_len 24
