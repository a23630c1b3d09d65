"""Triton glue: turns Triton requests into in-flight batcher requests and batcher outputs into (streamed)
Triton responses.

- `native/`: the native backend `tensorrtllm` (C++17, built by the root CMakeLists.txt): in tritonserver, it
  forwards requests to an engine process and sends every response with Triton's C API;
- `engine_core`: that engine process (one per rank): parses, runs the `Executor` (or follows rank 0), and
  hands each step's outputs back in one message; `wire`: the format between the two;

Modules (each importable without Triton, so unit tests can use them):
- `triton_utils`: the guarded `triton_python_backend_utils` import and small tensor helpers;
- `params`: model-config parameters (`string_value`s, unfilled `${...}` -> default with a warning);
- `tokenization`: tokenizer loading, prompt checks, word lists `[B, 2, L]`, embedding bias;
- `detokenizer`: streaming-correct detokenization (concatenated chunks == the whole text);
- `request_parsing`: `tensorrt_llm` model inputs -> `inflight_batcher.Request` arguments, with validation;
- `preprocessing_model`, `postprocessing_model`: what the thin `all_models/inflight_batcher_llm/*/1/model.py`
  adapters delegate to; `text_front`: the text API (`ensemble`, `tensorrt_llm_bls`) in the engine process;
- `metrics`: the `nv_trt_llm_*` custom metric families (declared and valued by the engine process).
"""
