"""The text interface of the `ensemble` and `tensorrt_llm_bls` models (text in, text out), served inside the
engine process.

The native backend serves both as *text fronts* of the `tensorrt_llm` engine (`backend/native`, `Front`):
their requests reach the engine process with the text interface's input names and a front id. Here they are
tokenized with the preprocessing logic, become engine inputs (the wiring the Triton ensemble had in its
`ensemble_scheduling`, and the TensorRT-LLM BLS in Python), and their outputs are detokenized
incrementally, exactly as the postprocessing model would (`backend/detokenizer.py`: streamed chunks
concatenate to the non-streamed text). The tokenizer settings are those of the `preprocessing` and
`postprocessing` models, which stay the one place to set them, unless a BLS config sets its own
`tokenizer_dir`.

The BLS front (a config with upstream's `tensorrt_llm_model_name` parameter) also honours
`accumulate_tokens` (each streamed response carries the whole text so far) and refuses the BLS inputs this
engine has no use for (draft-model speculation, multimodal encoders), as the Python BLS did. Unlike the
TensorRT-LLM BLS, stop words are matched on token ids by the engine, not again on the decoded text.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from backend.detokenizer import IncrementalDetokenizer, decode
from backend.interface import check_rejected, rejected_inputs, unsupported_parameter_warnings
from backend.params import Params
from backend.preprocessing_model import Preprocessor
from backend.tokenization import load_tokenizer
from backend.wire import declares_perf_outputs

# Text input -> preprocessing input.
TO_PREPROCESSING = {
    "text_input": "QUERY",
    "decoder_text_input": "DECODER_QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT",
    "embedding_bias_words": "EMBEDDING_BIAS_WORDS",
    "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
    "prompt_table_extra_id": "PROMPT_TABLE_EXTRA_ID",
}
# Preprocessing output -> engine input.
FROM_PREPROCESSING = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "DECODER_INPUT_ID": "decoder_input_ids",
    "REQUEST_DECODER_INPUT_LEN": "decoder_input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
    "EMBEDDING_BIAS": "embedding_bias",
    "STOP_WORDS_IDS": "stop_words_list",
    "BAD_WORDS_IDS": "bad_words_list",
    "OUT_PROMPT_TABLE_EXTRA_IDS": "prompt_table_extra_ids",
}
# Text input -> engine input, for those passed on as they are (with renames); the BLS uses it too.
PASS_THROUGH = {
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "length_penalty": "len_penalty",
    "stream": "streaming",
    "temperature": "temperature",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_length": "min_length",
    "beam_width": "beam_width",
    "random_seed": "random_seed",
    "return_log_probs": "return_log_probs",
    "return_context_logits": "return_context_logits",
    "return_generation_logits": "return_generation_logits",
    "return_perf_metrics": "return_perf_metrics",
    "exclude_input_in_output": "exclude_input_in_output",
    "num_return_sequences": "num_return_sequences",
    "prompt_embedding_table": "prompt_embedding_table",
    "prompt_vocab_size": "prompt_vocab_size",
    "lora_task_id": "lora_task_id",
    "lora_weights": "lora_weights",
    "lora_config": "lora_config",
    "guided_decoding_guide_type": "guided_decoding_guide_type",
    "guided_decoding_guide": "guided_decoding_guide",
}
# Inputs the BLS config declares (upstream's) that nothing here passes on: refused by the front itself.
BLS_ONLY = set(rejected_inputs("tensorrt_llm_bls")) - set(PASS_THROUGH) - set(TO_PREPROCESSING)
# Engine input names in the engine's error messages -> the names this client sent.
_CLIENT_NAMES = {
    **{v: k for k, v in PASS_THROUGH.items() if k != v},
    "request_output_len": "max_tokens",
    "stop_words_list": "stop_words",
    "bad_words_list": "bad_words",
}
_log = logging.getLogger("trtllm.engine")
_ENGINE_NAME = re.compile(r"\b(" + "|".join(map(re.escape, _CLIENT_NAMES)) + r")\b")


class TextFront:
    """One text model attached to this engine (`spec`: the FRONT frame of `backend/wire.py`)."""

    def __init__(self, spec: dict):
        self.name = spec.get("name", "ensemble")
        self.decoupled = bool(spec.get("decoupled", False))
        own = Params(spec.get("config", {}))
        self.bls = "tensorrt_llm_model_name" in own.raw and "engine_model" not in own.raw
        self.accumulate = self.bls and own.bool("accumulate_tokens", False)
        if self.bls:
            for message in unsupported_parameter_warnings(own.raw, "tensorrt_llm_bls"):
                _log.warning("%s: %s", self.name, message)
        self.perf_outputs = declares_perf_outputs(spec.get("config", {}))
        pre = Params(spec["preprocessing"])
        post = Params(spec["postprocessing"])
        pre_dir = pre.str("tokenizer_dir", required=True)
        post_dir = post.str("tokenizer_dir", required=True)
        self.pre = Preprocessor(load_tokenizer(pre_dir), pre.bool("add_special_tokens", True))
        self.tokenizer = self.pre.tokenizer if post_dir == pre_dir else load_tokenizer(post_dir)
        self.skip_special_tokens = post.bool("skip_special_tokens", True)

    def engine_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's text inputs -> the engine model's inputs; raises InputError."""
        if self.bls:
            check_rejected(inputs.get, "tensorrt_llm_bls", only=BLS_ONLY)
        pre = self.pre.process({p: inputs.get(t) for t, p in TO_PREPROCESSING.items()})
        out = {engine: pre[p] for p, engine in FROM_PREPROCESSING.items()}
        for name, engine in PASS_THROUGH.items():
            if name in inputs:
                out[engine] = inputs[name]
        return out

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, self.skip_special_tokens)

    def text(self, ids: list[int]) -> bytes:
        return decode(self.tokenizer, ids, self.skip_special_tokens).encode("utf-8")

    @staticmethod
    def client_message(message: str) -> str:
        """An engine error message in the text interface's input names."""
        return _ENGINE_NAME.sub(lambda m: _CLIENT_NAMES[m.group(1)], message)
