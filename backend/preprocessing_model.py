"""The `preprocessing` model: text -> token ids, stop/bad words -> `[B, 2, L]`, default end/pad ids."""

from __future__ import annotations

import json

import numpy as np

from backend.interface import unsupported_parameter_warnings
from backend.params import Params
from backend.tokenization import (
    default_end_pad_ids,
    embedding_bias,
    encode_prompt,
    flatten_words,
    load_tokenizer,
    to_text,
    to_word_list_format,
    word_list,
)
from backend.triton_utils import InputError, error_response, get_logger, input_array, log_warn, pb_utils


def _rows(arr, b: int):
    """Batch row `b` of an input (Triton adds the batch dim; `[-1]` inputs may have any length)."""
    if arr is None:
        return None
    a = np.asarray(arr)
    return a[b] if a.ndim >= 1 and a.shape[0] > b else a


def _first(arr, b: int, default=None):
    r = _rows(arr, b)
    if r is None or np.asarray(r).size == 0:
        return default
    return np.asarray(r).reshape(-1)[0].item()


class Preprocessor:
    """The preprocessing logic without Triton: used by the `preprocessing` model, the BLS and the engine
    process's text front."""

    def __init__(self, tokenizer, add_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.end_id, self.pad_id = default_end_pad_ids(tokenizer)
        self.vocab_size = len(tokenizer)

    def process(self, inputs: dict) -> dict[str, np.ndarray]:
        """One request's inputs (numpy, with batch dim) -> outputs; raises InputError."""
        dq = inputs.get("DECODER_QUERY")
        if dq is not None and any(to_text(x, "decoder_text_input") for x in np.asarray(dq).reshape(-1)):
            raise InputError("decoder_text_input is not supported: this engine has no encoder-decoder models")
        query = inputs.get("QUERY")
        if query is None:
            raise InputError("input text_input (QUERY) is required")
        query = np.asarray(query, dtype=object)
        batch = query.shape[0] if query.ndim else 1
        out_len = inputs.get("REQUEST_OUTPUT_LEN")
        if out_len is None:
            raise InputError("input max_tokens (REQUEST_OUTPUT_LEN) is required")
        prompts, bad, stop, biases, out_lens, ends, pads, extra_ids = [], [], [], [], [], [], [], []
        for b in range(batch):
            texts = [to_text(t, "text_input") for t in np.asarray(_rows(query, b), dtype=object).reshape(-1)]
            if len(texts) != 1:
                # v0.5 sent [-1] strings; one prompt per batch row either way.
                texts = ["".join(texts)]
            prompts.append(encode_prompt(self.tokenizer, texts[0], self.add_special_tokens))
            n = _first(out_len, b)
            if n is None:
                raise InputError("max_tokens is empty")
            out_lens.append(int(n))
            bad.append(word_list(self.tokenizer, flatten_words(_rows(inputs.get("BAD_WORDS_DICT"), b))))
            stop.append(word_list(self.tokenizer, flatten_words(_rows(inputs.get("STOP_WORDS_DICT"), b))))
            words = flatten_words(_rows(inputs.get("EMBEDDING_BIAS_WORDS"), b))
            if words:
                w = np.asarray(_rows(inputs.get("EMBEDDING_BIAS_WEIGHTS"), b), dtype=np.float32).reshape(-1)
                biases.append(embedding_bias(self.tokenizer, words, w.tolist(), self.vocab_size))
            else:
                biases.append(None)
            ends.append(_first(inputs.get("END_ID"), b, self.end_id))
            pads.append(_first(inputs.get("PAD_ID"), b, self.pad_id))
            extra_ids.append(_first(inputs.get("PROMPT_TABLE_EXTRA_ID"), b))

        width = max(len(p) for p in prompts)
        ids = np.zeros((batch, width), dtype=np.int32)
        for b, p in enumerate(prompts):
            ids[b, :] = pads[b] if pads[b] >= 0 else 0  # right padding with the pad id
            ids[b, : len(p)] = p
        # One prompt-table extra id per input token (UINT64), 0 on padding. The TensorRT-LLM preprocessing sets it
        # only on prompt-table (>= vocab size) tokens; this engine has no prompt tables, so it goes on every token
        # and the engine refuses a request that asks for one instead of ignoring it. Not sent: [B, 0], no ids.
        extra = np.zeros((batch, width if any(x is not None for x in extra_ids) else 0), dtype=np.uint64)
        for b, x in enumerate(extra_ids):
            if x is not None:
                extra[b, : len(prompts[b])] = x
        bias_w = self.vocab_size if any(x is not None for x in biases) else 0
        bias = np.zeros((batch, bias_w), dtype=np.float32)
        for b, x in enumerate(biases):
            if x is not None:
                bias[b] = x
        return {
            "INPUT_ID": ids,
            "REQUEST_INPUT_LEN": np.array([[len(p)] for p in prompts], dtype=np.int32),
            "DECODER_INPUT_ID": np.zeros((batch, 0), dtype=np.int32),
            "REQUEST_DECODER_INPUT_LEN": np.zeros((batch, 1), dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.array([[n] for n in out_lens], dtype=np.int32),
            "BAD_WORDS_IDS": to_word_list_format(bad),
            "STOP_WORDS_IDS": to_word_list_format(stop),
            "EMBEDDING_BIAS": bias,
            "OUT_END_ID": np.array([[e] for e in ends], dtype=np.int32),
            "OUT_PAD_ID": np.array([[p] for p in pads], dtype=np.int32),
            "OUT_PROMPT_TABLE_EXTRA_IDS": extra,
        }


class PreprocessingModel(Preprocessor):
    def __init__(self) -> None:  # Triton constructs it without arguments; `initialize` sets it up
        pass

    def initialize(self, args: dict) -> None:
        self.logger = get_logger(__name__)
        cfg = json.loads(args["model_config"])
        params = Params(cfg, warn=lambda m: log_warn(self.logger, m))
        for message in unsupported_parameter_warnings(params.raw, "preprocessing"):
            log_warn(self.logger, message)
        tokenizer = load_tokenizer(params.str("tokenizer_dir", required=True))
        Preprocessor.__init__(self, tokenizer, params.bool("add_special_tokens", True))

    INPUTS = [
        "QUERY",
        "DECODER_QUERY",
        "REQUEST_OUTPUT_LEN",
        "BAD_WORDS_DICT",
        "STOP_WORDS_DICT",
        "EMBEDDING_BIAS_WORDS",
        "EMBEDDING_BIAS_WEIGHTS",
        "END_ID",
        "PAD_ID",
        "PROMPT_TABLE_EXTRA_ID",
    ]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                inputs = {n: input_array(request, n) for n in self.INPUTS}
                outs = self.process(inputs)
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outs.items()])
                )
            except InputError as e:
                responses.append(error_response(str(e)))
        return responses
