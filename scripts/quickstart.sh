#!/usr/bin/env bash
# One command from a fresh machine to a running server: environment, a tiny Llama checkpoint and tokenizer
# (random weights, no download), its engine, a generation from a prompt, then tritonserver serving it on
# ports 8000 (HTTP) / 8001 (gRPC) / 8002 (metrics) until Ctrl-C. Extra flags go to the launcher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
WORK=${WORK:-work_dirs/quickstart}
[ -f "$WORK/hf_model/config.json" ] || python -m tensorrt_llm.tools.tiny_model "$WORK/hf_model"
[ -f "$WORK/engine/config.json" ] || trtllm-build --model_dir "$WORK/hf_model" --dtype float32 \
  --output_dir "$WORK/engine" --max_batch_size 64 --max_input_len 256 --max_output_len 256 --tokens_per_block 16
trtllm-run --engine_dir "$WORK/engine" --tokenizer_dir "$WORK/hf_model" \
  --input_text "How do I count to nine in French?" --max_output_len 24
cat <<'MSG'
(The text above is random: this tiny model has random weights, made here so that nothing is downloaded.
 The pipeline is the real one. To serve a real checkpoint directory (weights + tokenizer files):
   python scripts/quickstart_server.py --model_dir /models/Llama-3.1-8B-Instruct --dtype float16 --device cuda)

Starting tritonserver. Once it prints "ready", from another shell:
  curl -X POST localhost:8000/v2/models/ensemble/generate \
       -d '{"text_input": "What is machine learning?", "max_tokens": 20, "bad_words": "", "stop_words": ""}'
MSG
exec python scripts/quickstart_server.py --work_dir "$WORK" "$@"
