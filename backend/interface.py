"""Every input and parameter of the `tensorrt_llm` model, each marked handled, rejected or not supported.

The one table that the request parser (`request_parsing`: which inputs are refused, naming the feature), the
engine process's load (`engine_core`: parameters set to something this engine does not do are logged once,
with the reason) and the model repository README's differences (`python -m backend.interface` prints
them; a test keeps the README in step) all read, so that nothing can be accepted and ignored again.
A test checks that every input and parameter of the model's config.pbtxt and of the interface spec
(section 2.2) is here.

Statuses:
- `handled`: implemented.
- `rejected`: a request that uses it gets a clear error naming the feature (`note`); values in `neutral` mean
  "not used" and pass (the ensemble wires some inputs always, and upstream clients send neutral defaults).
- `unsupported` (parameters): accepted; a value other than the neutral ones is logged once at load as not
  supported, with the reason (`note`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    status: str  # "handled" | "rejected" | "unsupported"
    note: str = ""
    neutral: tuple = ()  # values meaning "not used": numbers for inputs, lower-case strings for parameters
    issue: str = ""  # the open issue that will implement it, if any


H = Entry("handled")


def _rejected(feature: str, *neutral, issue: str = "") -> Entry:
    return Entry("rejected", feature, neutral, issue)


def _unsupported(reason: str, *neutral: str, issue: str = "") -> Entry:
    return Entry("unsupported", reason, tuple(neutral), issue)


INPUTS: dict[str, Entry] = {
    **dict.fromkeys(
        [
            "input_ids",
            "input_lengths",
            "request_output_len",
            "end_id",
            "pad_id",
            "stop_words_list",
            "bad_words_list",
            "beam_width",
            "runtime_top_k",
            "runtime_top_p",
            "min_length",
            "temperature",
            "len_penalty",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "random_seed",
            "return_log_probs",
            "exclude_input_in_output",
            "stop",
            "streaming",
            "num_return_sequences",
            "early_stopping",
        ],
        H,
    ),  # fmt: skip
    # Neutral values: what the ensemble always wires, or upstream's documented defaults.
    "runtime_top_p_min": _rejected("top-p decay", 1e-6, 0.0),
    "runtime_top_p_decay": _rejected("top-p decay", 1.0, 0.0),
    "runtime_top_p_reset_ids": _rejected("top-p decay", -1),
    "beam_search_diversity_rate": _rejected("beam search diversity", 0.0),
    "embedding_bias": _rejected("embedding bias", 0.0),
    "return_context_logits": _rejected("context logits outputs", 0),
    "return_generation_logits": _rejected("generation logits outputs", 0),
    "return_perf_metrics": _rejected("per-request perf metrics outputs", 0),
    "draft_input_ids": _rejected("speculative decoding (draft tokens)"),
    "draft_logits": _rejected("speculative decoding (draft logits)"),
    "draft_acceptance_threshold": _rejected("speculative decoding", 0.0),
    "decoder_input_ids": _rejected("encoder-decoder models"),
    "decoder_input_lengths": _rejected("encoder-decoder models", 0),
    "encoder_input_features": _rejected("encoder-decoder models"),
    "encoder_output_lengths": _rejected("encoder-decoder models", 0),
    "cross_attention_mask": _rejected("encoder-decoder models"),
    "skip_cross_attn_blocks": _rejected("encoder-decoder models", 0),
    "prompt_embedding_table": _rejected("prompt tuning (prompt tables)"),
    "prompt_table_extra_ids": _rejected("prompt tuning (prompt tables)", 0),
    "prompt_vocab_size": _rejected("prompt tuning (prompt tables)", 0),
    # No neutral value: LoRA task 0 is a task like any other.
    "lora_task_id": _rejected("LoRA"),
    "lora_weights": _rejected("LoRA"),
    "lora_config": _rejected("LoRA"),
    "guided_decoding_guide_type": _rejected("guided decoding"),
    "guided_decoding_guide": _rejected("guided decoding"),
    "mrope_rotary_cos_sin": _rejected("multimodal rotary embedding"),
    "mrope_position_deltas": _rejected("multimodal rotary embedding", 0),
    "context_phase_params": _rejected("disaggregated serving"),
    "lookahead_window_size": _rejected("lookahead decoding", 0),
    "lookahead_ngram_size": _rejected("lookahead decoding", 0),
    "lookahead_verification_set_size": _rejected("lookahead decoding", 0),
    **{
        f"retention_{k}": _rejected("KV cache retention priorities", 0, issue="#14")
        for k in (
            "token_range_starts",
            "token_range_ends",
            "token_range_priorities",
            "token_range_durations_ms",
            "decode_priority",
            "decode_duration_ms",
        )
    },  # fmt: skip
}

PARAMETERS: dict[str, Entry] = {
    **dict.fromkeys(
        [
            "gpt_model_path",
            "max_beam_width",
            "max_tokens_in_paged_kv_cache",
            "batch_scheduler_policy",
            "kv_cache_free_gpu_mem_fraction",
            "exclude_input_in_output",
            "cancellation_check_period_ms",
            "stats_check_period_ms",
            "enable_chunked_context",
            "gpu_device_ids",
            "cuda_graph_mode",
            "max_batch_size",
            "max_num_tokens",
            "max_queue_size",
            "device",
            "gpt_model_type",
        ],
        H,
    ),  # fmt: skip
    # Always on: the decode attention kernel splits long contexts over SMs by itself.
    "multi_block_mode": _unsupported("always on (split-KV decode attention); cannot be turned off", "true"),
    # The log probs returned are always log-softmax of the sampling distribution.
    "normalize_log_probs": _unsupported("log probs are always normalized (log-softmax)", "true"),
    "decoding_mode": _unsupported(
        "the sampler follows each request's parameters (greedy, top-k, top-p, beams); no other mode exists",
        "auto",
        "top_k",
        "top_p",
        "top_k_top_p",
        "beam_search",
        "",
    ),  # fmt: skip
    "enable_kv_cache_reuse": _unsupported("no KV cache reuse yet: every prompt is computed", "false", issue="#14"),
    "kv_cache_host_memory_bytes": _unsupported("no KV cache host offload yet", "0", issue="#14"),
    "kv_cache_onboard_blocks": _unsupported("no KV cache host offload yet", "true", issue="#14"),
    "max_attention_window_size": _unsupported("attention always covers the whole sequence", issue="#14"),
    "sink_token_length": _unsupported("no attention sinks (attention covers the whole sequence)", "0", issue="#14"),
    "cuda_graph_cache_size": _unsupported("graphs are captured once per batch-size bucket at load", "0"),
    "encoder_model_path": _unsupported("encoder-decoder models are not supported"),
    "cross_kv_cache_fraction": _unsupported("encoder-decoder models are not supported"),
    "iter_stats_max_iterations": _unsupported("statistics are reported as metrics only"),
    "request_stats_max_iterations": _unsupported("statistics are reported as metrics only"),
    "participant_ids": _unsupported("one model instance per rank; no participant subsets"),
    **dict.fromkeys(
        [
            "lora_cache_optimal_adapter_size",
            "lora_cache_max_adapter_size",
            "lora_cache_gpu_memory_fraction",
            "lora_cache_host_memory_bytes",
            "lora_prefetch_dir",
        ],
        _unsupported("LoRA is not supported"),
    ),  # fmt: skip
    "medusa_choices": _unsupported("speculative decoding is not supported"),
    "eagle_choices": _unsupported("speculative decoding is not supported"),
    "speculative_decoding_fast_logits": _unsupported("speculative decoding is not supported", "false", "0"),
    "gpu_weights_percent": _unsupported("weights always live on the GPU (no streaming from host)", "1", "1.0"),
    "enable_context_fmha_fp32_acc": _unsupported("context attention accumulates in fp32 already", "true"),
    "guided_decoding_backend": _unsupported("guided decoding is not supported"),
    "xgrammar_tokenizer_info_path": _unsupported("guided decoding is not supported"),
    "tokenizer_dir": _unsupported("the engine model needs no tokenizer (guided decoding only)"),
    "executor_worker_path": _unsupported("there is no executor worker binary: the engine process is Python"),
    "FORCE_CPU_ONLY_INPUT_TENSORS": _unsupported("inputs are always read on the host", "yes", "no", "true", "false"),
    # Legacy (v0.5-v0.7) and orchestrator keys, not in today's template.
    "enable_trt_overlap": _unsupported("legacy: host and device work always overlap", "true", "false"),
    "max_num_sequences": _unsupported("legacy: use max_batch_size (executor_max_batch_size)"),
    "recv_poll_period_ms": _unsupported("nothing is polled: requests reach the engine as messages"),
    "num_nodes": _unsupported("one node", "1"),
    "max_kv_cache_length": _unsupported("legacy name of max_attention_window_size: not supported", issue="#14"),
}

# gpt_model_type values: upstream's V1 batching ran requests to completion; here every type batches in flight.
GPT_MODEL_TYPES = {"inflight_fused_batching", "inflight_batching", "v1"}


def rejected_inputs() -> dict[str, Entry]:
    return {k: e for k, e in INPUTS.items() if e.status == "rejected"}


def unsupported_parameter_warnings(raw: dict[str, str]) -> list[str]:
    """One message per parameter set (not empty, not a `${placeholder}`) to a value this engine cannot honour."""
    out = []
    for key, value in raw.items():
        v = (value or "").strip()
        e = PARAMETERS.get(key)
        if e is None or e.status != "unsupported" or not v or v.startswith("${") or v.lower() in e.neutral:
            continue
        out.append(f"parameter {key}={v!r} is not supported: {e.note}" + (f" (see issue {e.issue})" if e.issue else ""))
    return out


def differences_markdown() -> str:
    """The README's table of what the engine model refuses or does not honour."""
    rows = ["| name | kind | what happens |", "| --- | --- | --- |"]
    for kind, table in (("input", INPUTS), ("parameter", PARAMETERS)):
        for name, e in sorted(table.items()):
            if e.status == "handled":
                continue
            neutral = f" (accepted when {', '.join(repr(x) for x in e.neutral)})" if e.neutral else ""
            what = f"rejected: {e.note}{neutral}" if e.status == "rejected" else f"logged at load if set: {e.note}"
            rows.append(f"| `{name}` | {kind} | {what} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(differences_markdown())
