"""Every input and parameter of the five models, each marked handled, rejected or not supported.

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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
            "return_perf_metrics",
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
            "enable_kv_cache_reuse",
            "kv_cache_host_memory_bytes",
            "max_attention_window_size",
            "sink_token_length",
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
    "kv_cache_onboard_blocks": _unsupported(
        "offloaded KV blocks are always brought back on a prefix hit (kv_cache_host_memory_bytes)", "true"
    ),
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


# The text models. Their sampling inputs go to `tensorrt_llm` under the same or renamed names: what the
# engine refuses, they refuse (through it); what only they see is marked here.
_TEXT_INPUTS: dict[str, Entry] = {
    **dict.fromkeys(
        [
            "text_input",
            "max_tokens",
            "num_return_sequences",
            "bad_words",
            "stop_words",
            "end_id",
            "pad_id",
            "top_k",
            "top_p",
            "temperature",
            "length_penalty",
            "repetition_penalty",
            "min_length",
            "presence_penalty",
            "frequency_penalty",
            "random_seed",
            "return_log_probs",
            "exclude_input_in_output",
            "beam_width",
            "stream",
        ],
        H,
    ),  # fmt: skip
    "decoder_text_input": _rejected("encoder-decoder models", ""),
    "embedding_bias_words": _rejected("embedding bias", ""),
    "embedding_bias_weights": _rejected("embedding bias", 0.0),
    "return_context_logits": INPUTS["return_context_logits"],
    "return_generation_logits": INPUTS["return_generation_logits"],
    "return_perf_metrics": INPUTS["return_perf_metrics"],
    "prompt_embedding_table": INPUTS["prompt_embedding_table"],
    "prompt_table_extra_id": _rejected("prompt tuning (prompt tables)", 0),
    "prompt_vocab_size": INPUTS["prompt_vocab_size"],
    "lora_task_id": INPUTS["lora_task_id"],
    "lora_weights": INPUTS["lora_weights"],
    "lora_config": INPUTS["lora_config"],
    "guided_decoding_guide_type": INPUTS["guided_decoding_guide_type"],
    "guided_decoding_guide": INPUTS["guided_decoding_guide"],
}

MODELS: dict[str, tuple[dict[str, Entry], dict[str, Entry]]] = {
    "tensorrt_llm": (INPUTS, PARAMETERS),
    "preprocessing": (
        {
            **dict.fromkeys(
                ["QUERY", "REQUEST_OUTPUT_LEN", "BAD_WORDS_DICT", "STOP_WORDS_DICT", "END_ID", "PAD_ID"], H
            ),
            "DECODER_QUERY": _TEXT_INPUTS["decoder_text_input"],
            "EMBEDDING_BIAS_WORDS": _TEXT_INPUTS["embedding_bias_words"],
            "EMBEDDING_BIAS_WEIGHTS": _TEXT_INPUTS["embedding_bias_weights"],
            "PROMPT_TABLE_EXTRA_ID": _TEXT_INPUTS["prompt_table_extra_id"],
        },
        {
            "tokenizer_dir": H,
            "add_special_tokens": H,
            # Upstream reads the engine only for multimodal vocabularies; nothing to honour without them.
            "gpt_model_path": H,
            "multimodal_model_path": _unsupported("multimodal models are not supported"),
            "max_num_images": _unsupported("multimodal models are not supported"),
        },
    ),
    "postprocessing": (
        dict.fromkeys(["TOKENS_BATCH", "SEQUENCE_LENGTH", "STREAM_PREFIX_IDS", "STREAM_FINAL"], H),
        {"tokenizer_dir": H, "skip_special_tokens": H},
    ),
    "ensemble": (_TEXT_INPUTS, {}),
    "tensorrt_llm_bls": (
        {
            **_TEXT_INPUTS,
            "num_draft_tokens": _rejected("draft-model speculative decoding", 0),
            "use_draft_logits": _rejected("draft-model speculative decoding", 0),
            **dict.fromkeys(
                ["image_input", "image_bytes_input", "image_url_input", "video_bytes_input"],
                _rejected("multimodal input"),
            ),
        },
        {
            **dict.fromkeys(
                [
                    "accumulate_tokens",
                    "tensorrt_llm_model_name",
                    "tokenizer_dir",
                    "add_special_tokens",
                    "skip_special_tokens",
                ],
                H,
            ),  # fmt: skip
            "tensorrt_llm_draft_model_name": _unsupported("draft-model speculative decoding is not supported"),
            "multimodal_encoders_name": _unsupported("multimodal models are not supported"),
        },
    ),
}


def rejected_inputs(model: str = "tensorrt_llm") -> dict[str, Entry]:
    return {k: e for k, e in MODELS[model][0].items() if e.status == "rejected"}


def is_neutral(a: np.ndarray, entry: Entry) -> bool:
    """Whether input value `a` means "not used": empty, all empty strings, or all neutral numbers."""
    a = np.asarray(a)
    if a.size == 0:
        return True
    if a.dtype == object or a.dtype.kind in "SU":
        return all(len(x) == 0 for x in a.reshape(-1)) and "" in entry.neutral
    if not entry.neutral or any(isinstance(n, str) for n in entry.neutral):
        return False
    values = a.reshape(-1, 1).astype(np.float64)
    return bool(
        np.isclose(values, np.asarray(entry.neutral, dtype=np.float64)[None], rtol=1e-5, atol=1e-12).any(1).all()
    )


def check_rejected(get: Callable[[str], np.ndarray | None], model: str, only: set[str] | None = None) -> None:
    """Raises InputError for the first rejected input of `model` that a request uses (`get(name)` gives its
    value or None); `only` limits the check to some names (those the model itself must refuse)."""
    from backend.triton_utils import InputError

    for name, e in rejected_inputs(model).items():
        if only is not None and name not in only:
            continue
        a = get(name)
        if a is None or is_neutral(a, e):
            continue
        a = np.asarray(a)
        shown = a.reshape(-1)[0] if a.size == 1 else f"{a.dtype} {list(a.shape)}"
        raise InputError(f"input {name} ({shown!r}) is not supported: this engine has no {e.note}")


def unsupported_parameter_warnings(raw: dict[str, str], model: str = "tensorrt_llm") -> list[str]:
    """One message per parameter set (not empty, not a `${placeholder}`) to a value this engine cannot honour."""
    out = []
    for key, value in raw.items():
        v = (value or "").strip()
        e = MODELS[model][1].get(key)
        if e is None or e.status != "unsupported" or not v or v.startswith("${") or v.lower() in e.neutral:
            continue
        out.append(f"parameter {key}={v!r} is not supported: {e.note}" + (f" (see issue {e.issue})" if e.issue else ""))
    return out


def differences_markdown() -> str:
    """The README's table of what the models refuse or do not honour."""
    rows = ["| model | name | kind | what happens |", "| --- | --- | --- | --- |"]
    for model, (inputs, params) in MODELS.items():
        for kind, table in (("input", inputs), ("parameter", params)):
            for name, e in sorted(table.items()):
                if e.status == "handled":
                    continue
                neutral = f" (accepted when {', '.join(repr(x) for x in e.neutral)})" if e.neutral else ""
                what = f"rejected: {e.note}{neutral}" if e.status == "rejected" else f"logged at load if set: {e.note}"
                rows.append(f"| {model} | `{name}` | {kind} | {what} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(differences_markdown())
