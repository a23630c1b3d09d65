"""Triton Python-backend glue: turns Triton requests into in-flight batcher requests and batcher outputs into
(streamed) Triton responses.

Modules (each importable without Triton, so unit tests can use them):
- `triton_utils`: the guarded `triton_python_backend_utils` import and small tensor helpers;
- `params`: model-config parameters (`string_value`s, unfilled `${...}` -> default with a warning);
- `tokenization`: tokenizer loading, prompt checks, word lists `[B, 2, L]`, embedding bias;
- `detokenizer`: streaming-correct detokenization (concatenated chunks == the whole text);
- `request_parsing`: `tensorrt_llm` model inputs -> `inflight_batcher.Request` arguments, with validation;
- `engine_model`, `preprocessing_model`, `postprocessing_model`, `bls_model`: what the thin
  `all_models/inflight_batcher_llm/*/1/model.py` adapters delegate to;
- `metrics`: the `nv_trt_llm_*` custom metric families.
"""
